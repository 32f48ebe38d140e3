-- Overlap of the reference set and the seed pool with each benchmark's prompts (exact and word n-gram).
SELECT * FROM contamination;
