-- The views of results/montessori.duckdb; montessori.aggregate.build_database runs this file after loading the
-- tables. Everything here is plain DuckDB SQL over the tables, so any DuckDB client sees the same answers.

-- table1: the paper's Table 1 layout. One row per experiment x method x teacher iteration (no_finetune has no
-- teacher: NULL); AlpacaEval 2 LC win rate and win rate, MT-Bench score (1-10), then the headline metric of each
-- lm-eval benchmark (ARC-Challenge acc_norm, GSM8K exact_match, HellaSwag acc_norm, GPQA acc, MMLU acc).
-- A NULL cell means that evaluation has not been run. The student of an earlier teacher (method montessori_itI in
-- the DAG, see montessori/methods.py) is the montessori row of iteration I, as the paper's it1 beside it2.
-- alpaca_eval_subset says which AlpacaEval items the two AlpacaEval columns score: heldout (the items outside the
-- influence reference set, the default) or all 805 (the paper's); eval_scores holds every subset a run scored.
CREATE OR REPLACE VIEW table1 AS
SELECT
    experiment,
    method,
    iteration,
    max(subset) FILTER (WHERE benchmark = 'alpaca_eval') AS alpaca_eval_subset,
    max(value) FILTER (WHERE benchmark = 'alpaca_eval' AND metric = 'lc_win_rate') AS alpaca_eval_lc_win_rate,
    max(value) FILTER (WHERE benchmark = 'alpaca_eval' AND metric = 'win_rate') AS alpaca_eval_win_rate,
    max(value) FILTER (WHERE benchmark = 'mt_bench' AND headline) AS mt_bench,
    max(value) FILTER (WHERE benchmark = 'arc_challenge' AND headline) AS arc_challenge,
    max(value) FILTER (WHERE benchmark = 'gsm8k' AND headline) AS gsm8k,
    max(value) FILTER (WHERE benchmark = 'hellaswag' AND headline) AS hellaswag,
    max(value) FILTER (WHERE benchmark IN ('gpqa', 'gpqa_diamond') AND headline) AS gpqa,
    max(value) FILTER (WHERE benchmark = 'mmlu' AND headline) AS mmlu
FROM (SELECT * REPLACE (regexp_replace(method, '_it[0-9]+$', '') AS method) FROM eval_scores)
GROUP BY experiment, method, iteration
ORDER BY
    experiment,
    -- The paper's order: the untouched student, the baselines, Montessori-Instruct last.
    CASE method WHEN 'no_finetune' THEN 0 WHEN 'self_instruct' THEN 1 WHEN 'strong_teacher' THEN 2
        WHEN 'self_reward' THEN 3 WHEN 'llm2llm' THEN 4 WHEN 'montessori' THEN 5 ELSE 6 END,
    method,
    iteration NULLS FIRST;

-- lineage: one row per final training example, keyed by (experiment, method, candidate_id).
-- example -> the teacher prompt that wrote it (prompt_id) -> the seeds shown in that prompt (seed_ids, in
-- prompt order, with their texts) -> the teacher that wrote it (teacher_iteration: 0 = the untrained teacher,
-- i.e. self_instruct, or strong_teacher's external one; K = teacher_K of montessori or self_reward; I = teacher_I of
-- METHOD_itI; for llm2llm the round that added the example, 0 for self_instruct's examples it starts from).
-- Evidence, by method:
--   teacher_pairs         = the pairs of iterations 1..teacher_iteration of the loop that trained the teacher
--                           (montessori's or self_reward's; 0 for the others);
--   montessori: evidence_candidates = the scored candidates of iterations 1..teacher_iteration whose own teacher
--                           prompt drew at least one of this example's seeds (the closest evidence about these
--                           seeds), evidence_mean_influence and evidence_positive their mean influence and how many
--                           helped the student;
--   self_reward: the same candidates of its own loop, with evidence_mean_reward their mean self-judged reward;
--   llm2llm: augmented_from = the seed example the student failed, with the student's failed_answer and the
--                           grader's failure_judgment (NULL for the examples self_instruct's set gave it).
-- The untrained teacher never saw an influence score or a reward. Seed evidence is correlational (seeds are
-- shared by chance), not a claim that those candidates caused this example.
CREATE OR REPLACE VIEW lineage AS
WITH examples AS (
    SELECT *, regexp_replace(method, '_it[0-9]+$', '') AS family FROM train_sets
),
final_seeds AS (
    SELECT experiment, method, family, candidate_id, iteration,
           unnest(seed_ids) AS seed_id, generate_subscripts(seed_ids, 1) AS position
    FROM examples
),
seed_texts AS (
    SELECT f.experiment, f.method, f.candidate_id,
           list(s.seed_text ORDER BY f.position) AS seed_texts
    FROM final_seeds f
    LEFT JOIN seeds s ON s.experiment = f.experiment AND s.seed_id = f.seed_id
    GROUP BY f.experiment, f.method, f.candidate_id
),
-- Each loop's scored candidates by seed: influence (montessori), reward (self_reward). Iteration-1 candidates are
-- shared: teacher_0 writes them once for both loops.
scored_seeds AS (
    SELECT DISTINCT 'montessori' AS family, c.experiment, i.iteration, c.candidate_id, i.influence, NULL AS reward,
           unnest(c.seed_ids) AS seed_id
    FROM candidates c
    JOIN influence i ON i.experiment = c.experiment AND i.candidate_id = c.candidate_id
    WHERE c.method IS NULL
    UNION ALL
    SELECT DISTINCT 'self_reward' AS family, c.experiment, r.iteration, c.candidate_id, NULL AS influence, r.reward,
           unnest(c.seed_ids) AS seed_id
    FROM candidates c
    JOIN rewards r ON r.experiment = c.experiment AND r.candidate_id = c.candidate_id
    WHERE c.method IS NULL OR c.method = 'self_reward'
),
evidence AS (
    SELECT experiment, method, candidate_id,
           count(*) AS evidence_candidates,
           avg(influence) AS evidence_mean_influence,
           count(*) FILTER (WHERE influence > 0) AS evidence_positive,
           avg(reward) AS evidence_mean_reward
    FROM (
        SELECT DISTINCT f.experiment, f.method, f.candidate_id, s.candidate_id AS evidence_id, s.influence, s.reward
        FROM final_seeds f
        JOIN scored_seeds s
          ON s.experiment = f.experiment AND s.family = f.family AND s.seed_id = f.seed_id
         AND s.iteration BETWEEN 1 AND f.iteration
    )
    GROUP BY experiment, method, candidate_id
),
pairs_per_iteration AS (
    SELECT experiment, method AS family, iteration, count(*) AS n_pairs FROM pairs GROUP BY ALL
)
SELECT
    t.experiment,
    t.method,
    t.candidate_id,
    t.prompt_id,
    t.iteration AS teacher_iteration,
    t.teacher,
    t.instruction,
    t.response,
    t.seed_ids,
    st.seed_texts,
    c.n_generated_in_context,
    (SELECT coalesce(sum(p.n_pairs), 0)::BIGINT FROM pairs_per_iteration p
      WHERE p.experiment = t.experiment AND p.family = t.family AND p.iteration BETWEEN 1 AND t.iteration)
      AS teacher_pairs,
    coalesce(e.evidence_candidates, 0) AS evidence_candidates,
    e.evidence_mean_influence,
    coalesce(e.evidence_positive, 0) AS evidence_positive,
    e.evidence_mean_reward,
    t.augmented_from,
    lt.answer AS failed_answer,
    lt.judgment AS failure_judgment
FROM examples t
-- An LLM2LLM set holds self_instruct's final candidates and the examples its own rounds wrote.
LEFT JOIN candidates c
  ON c.experiment = t.experiment AND c.candidate_id = t.candidate_id
 AND (c.method = t.method OR (t.family = 'llm2llm' AND c.method IN ('llm2llm', 'self_instruct')))
LEFT JOIN seed_texts st ON st.experiment = t.experiment AND st.method = t.method AND st.candidate_id = t.candidate_id
LEFT JOIN evidence e ON e.experiment = t.experiment AND e.method = t.method AND e.candidate_id = t.candidate_id
LEFT JOIN llm2llm_tests lt
  ON lt.experiment = t.experiment AND lt.candidate_id = t.augmented_from AND lt.iteration = t.iteration
ORDER BY t.experiment, t.method, t.candidate_id;

-- siblings: one row per candidate of a Montessori iteration (stage iterN), beside the other candidates the same
-- teacher prompt produced: its influence (NULL when the filters rejected it, so it was never scored), its rank
-- among the prompt's scored candidates (1 = most helpful), the influences of all the prompt's candidates
-- (ordered by candidate_id), and how often it was the chosen or rejected side of a DPO pair.
CREATE OR REPLACE VIEW siblings AS
WITH scored AS (
    SELECT c.experiment, c.iteration, c.prompt_id, c.candidate_id, c.verdict, c.instruction, i.influence
    FROM candidates c
    LEFT JOIN influence i ON i.experiment = c.experiment AND i.candidate_id = c.candidate_id
    WHERE c.method IS NULL AND c.stage LIKE 'iter%'
),
chosen AS (
    SELECT experiment, chosen_candidate_id AS candidate_id, count(*) AS n FROM pairs
    WHERE method = 'montessori' GROUP BY ALL
),
rejected AS (
    SELECT experiment, rejected_candidate_id AS candidate_id, count(*) AS n FROM pairs
    WHERE method = 'montessori' GROUP BY ALL
)
SELECT
    s.experiment,
    s.iteration,
    s.prompt_id,
    s.candidate_id,
    s.verdict,
    s.instruction,
    s.influence,
    CASE WHEN s.influence IS NOT NULL THEN
        rank() OVER (PARTITION BY s.experiment, s.iteration, s.prompt_id
                     ORDER BY s.influence DESC NULLS LAST)
    END AS influence_rank,
    count(*) OVER prompt_candidates AS n_siblings,
    list(s.influence) OVER prompt_candidates AS sibling_influences,
    coalesce(ch.n, 0) AS n_pairs_chosen,
    coalesce(rj.n, 0) AS n_pairs_rejected
FROM scored s
LEFT JOIN chosen ch ON ch.experiment = s.experiment AND ch.candidate_id = s.candidate_id
LEFT JOIN rejected rj ON rj.experiment = s.experiment AND rj.candidate_id = s.candidate_id
WINDOW prompt_candidates AS (
    PARTITION BY s.experiment, s.iteration, s.prompt_id ORDER BY s.candidate_id
    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING
)
ORDER BY s.experiment, s.iteration, s.prompt_id, s.candidate_id;

-- costs: wall-clock seconds per experiment and rule (a stage), from the Snakemake benchmark files: jobs, their
-- total and longest seconds (repeated runs of one job are averaged first), peak RSS; for influence_shard also
-- the candidates scored and seconds per candidate (total shard seconds / influence rows of the experiment).
CREATE OR REPLACE VIEW costs AS
WITH per_job AS (
    SELECT experiment, rule, wildcards, avg(seconds) AS seconds, max(max_rss_mb) AS max_rss_mb
    FROM jobs
    GROUP BY experiment, rule, wildcards
),
per_rule AS (
    SELECT experiment, rule, count(*) AS n_jobs, sum(seconds) AS seconds, max(seconds) AS max_job_seconds,
           max(max_rss_mb) AS max_rss_mb
    FROM per_job
    GROUP BY experiment, rule
),
scored AS (
    SELECT experiment, count(*) AS n_candidates FROM influence GROUP BY experiment
)
SELECT
    r.experiment,
    r.rule,
    r.n_jobs,
    r.seconds,
    r.max_job_seconds,
    r.max_rss_mb,
    CASE WHEN r.rule = 'influence_shard' THEN s.n_candidates END AS n_candidates,
    CASE WHEN r.rule = 'influence_shard' THEN r.seconds / nullif(s.n_candidates, 0) END AS seconds_per_candidate
FROM per_rule r
LEFT JOIN scored s ON s.experiment = r.experiment
ORDER BY r.experiment, r.seconds DESC, r.rule;

-- contamination: how much of our own text overlaps each benchmark's prompts, per experiment and source (the
-- reference set of local influence, the seed pool). Texts are normalized (lower case, every run of
-- non-alphanumerics one space). exact = normalized texts equal; near_duplicate = exact, or sharing at least one
-- word n-gram (n in column ngram, 8 by default) with a prompt; texts shorter than n words match only exactly.
-- Benchmark prompts: AlpacaEval instructions, MT-Bench turn 1, ARC-Challenge/GSM8K/GPQA/MMLU questions, HellaSwag
-- contexts; GPQA is decrypted in memory only. A benchmark whose files were missing has n_prompts 0 and a note.
-- The reference set is by construction 256 AlpacaEval instructions: expect exact overlap with alpaca_eval.
-- scope 'benchmark': every prompt of the benchmark; exact / near_duplicate count SOURCE items that match one,
--   and the fractions are of the source's n_items.
-- scope 'evaluated heldout' / 'evaluated all': the AlpacaEval items the experiment scored in that subset (over
--   all its methods); exact / near_duplicate count those EVALUATED items that match a source item, and the
--   fractions are of n_prompts. The held-out subset must show 0 exact overlap with the reference set.
CREATE OR REPLACE VIEW contamination AS
WITH sources AS (
    SELECT experiment, 'reference' AS source, count(*) AS n_items FROM reference GROUP BY experiment
    UNION ALL
    SELECT experiment, 'seeds' AS source, count(*) AS n_items FROM seeds GROUP BY experiment
),
hits AS (
    SELECT experiment, source, benchmark,
           count(DISTINCT item_id) FILTER (WHERE match = 'exact') AS exact,
           count(DISTINCT item_id) AS near_duplicate
    FROM contamination_matches
    GROUP BY experiment, source, benchmark
),
evaluated AS (
    SELECT experiment, benchmark, subset, count(DISTINCT item_id) AS n_prompts
    FROM evaluated_items
    GROUP BY experiment, benchmark, subset
),
evaluated_hits AS (
    SELECT e.experiment, c.source, e.benchmark, e.subset,
           count(DISTINCT e.item_id) FILTER (WHERE c.match = 'exact') AS exact,
           count(DISTINCT e.item_id) AS near_duplicate
    FROM (SELECT DISTINCT experiment, benchmark, subset, item_id FROM evaluated_items) e
    JOIN contamination_evaluated c
      ON c.experiment = e.experiment AND c.benchmark = e.benchmark AND c.item_id = e.item_id
    GROUP BY e.experiment, c.source, e.benchmark, e.subset
)
SELECT
    s.experiment,
    s.source,
    s.n_items,
    b.benchmark,
    'benchmark' AS scope,
    b.n_prompts,
    b.ngram,
    coalesce(h.exact, 0) AS exact,
    coalesce(h.near_duplicate, 0) AS near_duplicate,
    coalesce(h.exact, 0) / s.n_items AS exact_fraction,
    coalesce(h.near_duplicate, 0) / s.n_items AS near_duplicate_fraction,
    b.note
FROM sources s
CROSS JOIN contamination_benchmarks b
LEFT JOIN hits h ON h.experiment = s.experiment AND h.source = s.source AND h.benchmark = b.benchmark
UNION ALL
SELECT
    s.experiment,
    s.source,
    s.n_items,
    e.benchmark,
    'evaluated ' || e.subset AS scope,
    e.n_prompts,
    b.ngram,
    coalesce(h.exact, 0) AS exact,
    coalesce(h.near_duplicate, 0) AS near_duplicate,
    coalesce(h.exact, 0) / e.n_prompts AS exact_fraction,
    coalesce(h.near_duplicate, 0) / e.n_prompts AS near_duplicate_fraction,
    b.note
FROM sources s
JOIN evaluated e ON e.experiment = s.experiment
JOIN contamination_benchmarks b ON b.benchmark = e.benchmark
LEFT JOIN evaluated_hits h
  ON h.experiment = s.experiment AND h.source = s.source AND h.benchmark = e.benchmark AND h.subset = e.subset
ORDER BY experiment, source, benchmark, scope;
