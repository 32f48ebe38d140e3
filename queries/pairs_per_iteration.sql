-- DPO pairs per iteration: how many, from how many of the scored teacher prompts, and the influence margin
-- between the chosen and the rejected side.
WITH prompts AS (
    SELECT experiment, iteration, count(DISTINCT prompt_id) AS scored_prompts FROM influence GROUP BY ALL
)
SELECT
    p.experiment,
    p.iteration,
    count(*) AS n_pairs,
    count(DISTINCT p.prompt_id) AS prompts_with_pairs,
    any_value(s.scored_prompts) AS scored_prompts,
    avg(p.chosen_influence - p.rejected_influence) AS mean_margin,
    min(p.chosen_influence - p.rejected_influence) AS min_margin
FROM pairs p
LEFT JOIN prompts s ON s.experiment = p.experiment AND s.iteration = p.iteration
GROUP BY p.experiment, p.iteration
ORDER BY p.experiment, p.iteration;
