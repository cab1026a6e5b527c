package reconcile

import (
	"crypto/sha256"
	"encoding/hex"
)

// LeaseName is the name of the broker lease (broker.OpenLease) that serializes repairs of
// database across the processes writing it (Config.Lease). Database names may hold
// characters a key-value key may not: the name carries a digest of the database's.
func LeaseName(database string) string {
	sum := sha256.Sum256([]byte(database))
	return "reconcile-db-" + hex.EncodeToString(sum[:12])
}
