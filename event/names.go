package event

import (
	"strings"

	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// Storage and API use short lower-case names for enums ("rotated", "user", "day"): readable
// in SQL and stable even if an enum's Go identifier changes.

// ActionName is the stored name of an action: ACTION_SCOPES_CHANGED -> "scopes_changed".
func ActionName(a keytrailv1.Action) string {
	return enumName(a.String(), "ACTION_")
}

// ParseAction maps a stored action name back to the enum; ok is false for unknown names.
func ParseAction(name string) (keytrailv1.Action, bool) {
	v, ok := keytrailv1.Action_value["ACTION_"+strings.ToUpper(name)]
	return keytrailv1.Action(v), ok && v != 0
}

// ActorTypeName is the stored name of an actor type, "" when unspecified.
func ActorTypeName(a keytrailv1.ActorType) string {
	return enumName(a.String(), "ACTOR_TYPE_")
}

// ParseActorType maps a stored actor type name back to the enum.
func ParseActorType(name string) keytrailv1.ActorType {
	return keytrailv1.ActorType(keytrailv1.ActorType_value["ACTOR_TYPE_"+strings.ToUpper(name)])
}

// BudgetPeriodName is the stored name of a budget period, "" when unspecified.
func BudgetPeriodName(p keytrailv1.BudgetPeriod) string {
	return enumName(p.String(), "BUDGET_PERIOD_")
}

// ParseBudgetPeriod maps a stored budget period name back to the enum.
func ParseBudgetPeriod(name string) keytrailv1.BudgetPeriod {
	return keytrailv1.BudgetPeriod(keytrailv1.BudgetPeriod_value["BUDGET_PERIOD_"+strings.ToUpper(name)])
}

func enumName(full, prefix string) string {
	name := strings.ToLower(strings.TrimPrefix(full, prefix))
	if name == "unspecified" {
		return ""
	}
	return name
}
