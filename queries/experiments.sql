-- The experiments in the database: config hash and how far each run got.
SELECT
    e.experiment,
    e.config_hash,
    e.iterations,
    (SELECT count(*) FROM candidates c WHERE c.experiment = e.experiment) AS candidates,
    (SELECT count(*) FROM influence i WHERE i.experiment = e.experiment) AS scored,
    (SELECT count(*) FROM pairs p WHERE p.experiment = e.experiment) AS pairs,
    (SELECT count(*) FROM train_sets t WHERE t.experiment = e.experiment) AS final_examples,
    (SELECT count(DISTINCT (method, benchmark)) FROM eval_scores s
      WHERE s.experiment = e.experiment) AS evaluations
FROM experiments e
ORDER BY e.experiment;
