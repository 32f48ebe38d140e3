-- Where the time went: seconds per stage (rule) and, for the influence shards, per candidate.
SELECT * FROM costs;
