-- The paper's Table 1: one row per experiment x method x teacher iteration (montessori table1 prints the same).
SELECT * FROM table1;
