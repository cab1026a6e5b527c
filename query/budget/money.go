package budget

import (
	"math/big"
	"strconv"
)

// MicrosPerUnit is how many micros make one unit of the billing currency.
const MicrosPerUnit = 1_000_000

// FormatMicros writes an amount of micros as a decimal with six places: 12345678 is
// "12.345678", 5 is "0.000005". Integer arithmetic only, so the text is exactly the amount.
// Spend is never negative (the ingester rejects negative costs); a negative amount is still
// written correctly, with a leading "-".
func FormatMicros(micros int64) string {
	sign := ""
	// Through uint64 so that math.MinInt64 has an absolute value too.
	abs := uint64(micros)
	if micros < 0 {
		sign = "-"
		abs = -abs
	}
	frac := strconv.FormatUint(abs%MicrosPerUnit, 10)
	const zeros = "000000"
	return sign + strconv.FormatUint(abs/MicrosPerUnit, 10) + "." + zeros[len(frac):] + frac
}

// Status is where spend stands against a budget.
type Status int

// The statuses, from best to worst.
const (
	OK Status = iota + 1
	Near
	Over
)

// String is "ok", "near" or "over".
func (s Status) String() string {
	switch s {
	case OK:
		return "ok"
	case Near:
		return "near"
	case Over:
		return "over"
	}
	return "unknown"
}

// PercentUsed is spend as a percentage of a budget, for display and sorting. Budgets of zero
// or less have no meaningful percentage and give 0.
func PercentUsed(spendMicros, budgetMicros int64) float64 {
	if budgetMicros <= 0 {
		return 0
	}
	return float64(spendMicros) * 100 / float64(budgetMicros)
}

// Classify is Over when spend reached the budget (>= 100%), Near when it reached
// thresholdPercent of it, OK otherwise. The comparison is exact, not made on the rounded
// PercentUsed: the threshold is taken as the decimal it was written as (0.1 is one tenth,
// not the binary float just above it), so 1 micro of a 1000-micro budget is NEAR at a 0.1%
// threshold, and a status never disagrees with a percentage printed as exactly the threshold.
// budgetMicros must be positive.
func Classify(spendMicros, budgetMicros int64, thresholdPercent float64) Status {
	if spendMicros >= budgetMicros {
		return Over
	}
	// The shortest decimal that reads back as the same float is what the caller wrote.
	threshold, ok := new(big.Rat).SetString(strconv.FormatFloat(thresholdPercent, 'g', -1, 64))
	if !ok {
		// NaN or infinite: callers validate against this; never alert on nonsense.
		return OK
	}
	// spend * 100 >= threshold * budget, in rationals: no overflow, no rounding.
	lhs := new(big.Rat).SetInt(new(big.Int).Mul(big.NewInt(spendMicros), big.NewInt(100)))
	rhs := new(big.Rat).Mul(threshold, new(big.Rat).SetInt64(budgetMicros))
	if lhs.Cmp(rhs) >= 0 {
		return Near
	}
	return OK
}
