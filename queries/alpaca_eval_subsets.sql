-- AlpacaEval 2 per subset scored: heldout (outside the influence reference set) beside all 805 (the paper's).
--   montessori query queries/alpaca_eval_subsets.sql
SELECT
    experiment,
    method,
    iteration,
    max(value) FILTER (WHERE metric = 'heldout_lc_win_rate') AS heldout_lc_win_rate,
    max(value) FILTER (WHERE metric = 'heldout_win_rate') AS heldout_win_rate,
    max(value) FILTER (WHERE metric = 'all_lc_win_rate') AS all_lc_win_rate,
    max(value) FILTER (WHERE metric = 'all_win_rate') AS all_win_rate
FROM eval_scores
WHERE benchmark = 'alpaca_eval'
GROUP BY ALL
ORDER BY ALL;
