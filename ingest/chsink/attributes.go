package chsink

import "sort"

// sortedAttributes flattens a map into parallel key/value arrays (ClickHouse 18.16 has no
// Map type), sorted by key so equal maps are stored identically.
func sortedAttributes(m map[string]string) ([]string, []string) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	values := make([]string, len(keys))
	for i, k := range keys {
		values[i] = m[k]
	}
	return keys, values
}
