//! The checker over a chaos run's history (issue 29's four invariants) and its report.
