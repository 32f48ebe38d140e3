-- How the teacher's candidates moved the student, per iteration: how many helped (influence > 0), how many
-- hurt, and the spread. The baseline column says which influence definition the run used.
SELECT
    experiment,
    iteration,
    any_value(baseline) AS baseline,
    count(*) AS n_candidates,
    count(*) FILTER (WHERE influence > 0) AS n_positive,
    count(*) FILTER (WHERE influence < 0) AS n_negative,
    avg(influence) AS mean_influence,
    stddev_samp(influence) AS sd_influence,
    min(influence) AS min_influence,
    median(influence) AS median_influence,
    max(influence) AS max_influence
FROM influence
GROUP BY experiment, iteration
ORDER BY experiment, iteration;
