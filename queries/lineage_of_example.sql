-- Where one final training example came from: its teacher prompt, seeds, teacher iteration and the influence
-- evidence behind that teacher (see the lineage view in views.sql).
--   montessori query queries/lineage_of_example.sql --set experiment=default --set method=montessori \
--       --set candidate_id=final-p00000-c0
SELECT
    l.experiment, l.method, l.candidate_id, l.prompt_id, l.teacher_iteration, l.teacher,
    l.instruction, unnest(l.seed_ids) AS seed_id, unnest(l.seed_texts) AS seed_text,
    l.teacher_pairs, l.evidence_candidates, l.evidence_mean_influence, l.evidence_positive
FROM lineage l
WHERE l.experiment = getvariable('experiment')
  AND l.method = getvariable('method')
  AND l.candidate_id = getvariable('candidate_id');
