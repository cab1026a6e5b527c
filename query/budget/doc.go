// Package budget is the calendar and money arithmetic behind spend reports and budgets: where
// an hour, day, ISO week or month starts in UTC, how spend compares with a budget, and how an
// amount in micros is written as a decimal. It does no I/O.
//
// Guarantees: every boundary is computed in UTC, so an answer never depends on the server's
// or the caller's time zone; money stays an int64 count of micros and is formatted with
// integer arithmetic, so a printed amount is exactly the stored one; the status of a budget is
// decided with exact rational arithmetic, so 80.000000% of a budget is NEAR at an 80% threshold
// however the numbers round in floating point.
package budget
