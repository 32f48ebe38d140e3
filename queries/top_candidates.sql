-- The three most and three least helpful instructions of every iteration: what the teacher learns to prefer.
WITH ranked AS (
    SELECT
        i.experiment, i.iteration, i.influence, c.instruction,
        row_number() OVER (PARTITION BY i.experiment, i.iteration ORDER BY i.influence DESC, i.candidate_id) AS best,
        row_number() OVER (PARTITION BY i.experiment, i.iteration ORDER BY i.influence ASC, i.candidate_id) AS worst
    FROM influence i
    JOIN candidates c ON c.experiment = i.experiment AND c.candidate_id = i.candidate_id AND c.method IS NULL
)
SELECT experiment, iteration, CASE WHEN best <= 3 THEN 'top' ELSE 'bottom' END AS side, influence, instruction
FROM ranked
WHERE best <= 3 OR worst <= 3
ORDER BY experiment, iteration, influence DESC;
