-- Why candidates were dropped: the filter verdicts per experiment, stage and method ("ok" = kept).
SELECT experiment, stage, method, verdict, count(*) AS n
FROM candidates
GROUP BY ALL
ORDER BY experiment, stage, method NULLS FIRST, n DESC, verdict;
