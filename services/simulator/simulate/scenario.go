package simulate

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keytrail/keytrail/event"
	keytrailv1 "github.com/keytrail/keytrail/gen/keytrail/v1"
)

// When each notable feature happens, as an offset from Config.Start. doc.go tells the story.
const (
	usageStartsAt       = time.Second // after the initial created events
	rotationNewKeyAt    = 10 * time.Second
	expiringCreatedAt   = 15 * time.Second
	rotatedAt           = 20 * time.Second
	budgetSetAt         = 30 * time.Second
	disabledAt          = time.Minute
	rotationSplitAt     = time.Minute // first moved service switches, mixed services split
	rotationLastMoveAt  = 2 * time.Minute
	scopesChangedAt     = 3 * time.Minute
	newCallerFrom       = 4 * time.Minute
	expiresAfter        = 5 * time.Minute
	spikeFrom           = 6 * time.Minute
	spikeUntil          = 10 * time.Minute
	budgetCrossedAround = 10 * time.Minute

	spikeFactor = 15
	// The forgotten job runs every minute at second 7 and makes 3 calls.
	cronPeriod = time.Minute
	cronAt     = 7 * time.Second
	cronCalls  = 3
	// Statuses the gateway answers for a key it refuses.
	statusDisabled = 403
	statusExpired  = 401
)

// Config configures a scenario.
type Config struct {
	// Seed makes the traffic reproducible: the same Seed and Start give the same events.
	Seed int64
	// Start is the scenario's time zero; every event time is at or after it.
	Start time.Time
	// Rate is the mean number of usage events per second outside the spike.
	Rate float64
	// History runs the fleet's ordinary traffic for this long before Start (keys created at
	// Start-History), so the story's answers that need a baseline (anomalies, new callers,
	// alerts) have one. 0: the fleet starts at Start.
	History time.Duration
}

// Validate reports every problem at once.
func (c Config) Validate() error {
	var errs []error
	if c.Start.IsZero() {
		errs = append(errs, errors.New("simulate: start time is required"))
	}
	if c.History < 0 || c.History > 7*24*time.Hour {
		errs = append(errs, fmt.Errorf("simulate: history %v must be between 0 and 7 days", c.History))
	}
	if !(c.Rate > 0) || math.IsInf(c.Rate, 0) || c.Rate > 1e6 {
		errs = append(errs, fmt.Errorf("simulate: rate %v must be positive and at most 1e6 events/s", c.Rate))
	}
	return errors.Join(errs...)
}

// Notable names the keys and services of the scenario's features and when each happens, so a
// user knows what to ask keytrail. The ids are the same for every seed.
type Notable struct {
	// A double-key roll in progress in project acme.
	RotationOldKey, RotationNewKey string
	RotatedAt                      time.Time
	// Moved services use only the new key, the first from RotationSplitAt, the last from
	// RotationMovedBy. Mixed services split their traffic between both keys from
	// RotationSplitAt on (half of their gateway instances were redeployed). Pending services
	// still use only the old key.
	RotationMovedServices   []string
	RotationMixedServices   []string
	RotationPendingServices []string
	RotationSplitAt         time.Time
	RotationMovedBy         time.Time

	// A disabled key a forgotten cron job keeps calling, answered with ForgottenJobStatus.
	DisabledKey         string
	DisabledAt          time.Time
	ForgottenJobService string
	ForgottenJobStatus  uint32

	// A key whose rate jumps SpikeFactor-fold between SpikeStart and SpikeEnd.
	SpikeKey             string
	SpikeStart, SpikeEnd time.Time
	SpikeFactor          float64

	// A service first seen on an existing key at NewCallerFrom.
	NewCallerKey, NewCallerService string
	NewCallerFrom                  time.Time

	// A key with a small daily budget (set at BudgetSetAt) that its spend passes around
	// BudgetCrossedAround.
	OverBudgetKey       string
	BudgetMicros        int64
	BudgetSetAt         time.Time
	BudgetCrossedAround time.Time

	// A key created with a TTL, still called after ExpiresAt (no expired event is sent),
	// answered with status 401 from then on.
	ExpiringKey   string
	ExpiresAt     time.Time
	ExpiredCaller string

	// A key whose scopes change, with a before/after record.
	ScopesChangedKey string
	ScopesChangedAt  time.Time
}

// Scenario generates the events of one simulated gateway fleet. It holds no clock: Tick is a
// pure function of the configuration and the time slice, so any partition of time into slices
// yields the same events. It is safe for concurrent use.
type Scenario struct {
	cfg       Config
	seed      uint64 // the mixed Seed, for the traffic generators
	runID     uint64 // Seed and Start mixed: event ids differ between runs
	streams   []stream
	crons     []stream
	lifecycle []event.Event // sorted by time
	notable   Notable
}

// stream is the traffic of one service on one key.
type stream struct {
	project, key, service string
	rate                  float64 // events per second at factor 1
	phases                []phase // factor 0 before the first phase
	routes                []route
	instances             []string
	clientIP              string
	// The gateway refuses the key from these offsets on (0 = never).
	disabledAt, expiresAt time.Duration
}

type phase struct {
	at     time.Duration
	factor float64
}

// factor is the multiplier of the stream's rate at offset off.
func (s *stream) factor(off time.Duration) float64 {
	f := 0.0
	for _, p := range s.phases {
		if off < p.at {
			break
		}
		f = p.factor
	}
	return f
}

// Fractions of Rate taken by the notable streams; the background keys share the rest.
const (
	rotationShare  = 0.006 // per service, six services
	spikeShare     = 0.005 // per service, two services
	newCallerShare = 0.004 // per service, three services
	disabledShare  = 0.003
	expiringShare  = 0.004
	budgetShare    = 0.01
	notableShare   = 6*rotationShare + 2*spikeShare + 3*newCallerShare + disabledShare + expiringShare + budgetShare
)

// New builds the scenario: the keys, who calls them, and the lifecycle history.
func New(cfg Config) (*Scenario, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Scenario{
		cfg:   cfg,
		seed:  mix(uint64(cfg.Seed)),
		runID: mix(mix(uint64(cfg.Seed)) ^ uint64(cfg.Start.UnixNano())),
	}
	b := &builder{s: s, rng: rand.New(rand.NewPCG(s.seed, 0x5ce7a210)), ipOf: map[string]string{}}
	b.background()
	b.rotation()
	b.disabled()
	b.spike()
	b.newCaller()
	b.overBudget()
	b.expiring()
	b.scopesChanged()
	slices.SortStableFunc(s.lifecycle, func(a, b event.Event) int {
		return a.Lifecycle.GetTime().AsTime().Compare(b.Lifecycle.GetTime().AsTime())
	})
	return s, nil
}

// Notable returns the ids and times of the scenario's features.
func (s *Scenario) Notable() Notable {
	n := s.notable
	n.RotationMovedServices = slices.Clone(n.RotationMovedServices)
	n.RotationMixedServices = slices.Clone(n.RotationMixedServices)
	n.RotationPendingServices = slices.Clone(n.RotationPendingServices)
	return n
}

// Start is the scenario's time zero.
func (s *Scenario) Start() time.Time { return s.cfg.Start }

// History is how long the fleet's traffic runs before Start.
func (s *Scenario) History() time.Duration { return s.cfg.History }

// builder holds what only construction needs.
type builder struct {
	s     *Scenario
	rng   *rand.Rand
	lcSeq int
	ipOf  map[string]string // project/service -> client IP
}

func (b *builder) at(off time.Duration) time.Time { return b.s.cfg.Start.Add(off) }

// usageFrom is the offset where the fleet's ordinary traffic begins.
func (b *builder) usageFrom() time.Duration { return usageStartsAt - b.s.cfg.History }

func keyID(project string, n int) string { return fmt.Sprintf("key_%s_%04d", project, n) }

func gateways(project string) []string {
	return []string{"gw-" + project + "-1", "gw-" + project + "-2", "gw-" + project + "-3"}
}

func (b *builder) clientIP(project, service string) string {
	k := project + "/" + service
	if ip, ok := b.ipOf[k]; ok {
		return ip
	}
	n := len(b.ipOf)
	ip := fmt.Sprintf("10.%d.%d.%d", 20+n/250/250%200, n/250%250, n%250+2)
	b.ipOf[k] = ip
	return ip
}

// background creates every project's keys with their created events, and the ordinary
// traffic of the keys no feature is about.
func (b *builder) background() {
	reserved := map[string]bool{}
	for _, n := range []string{
		"checkout-api", "billing-api", "invoice-worker", "search-api", "ledger-sync-cron", "support-bot",
		"report-api", "legacy-export-cron", "search-worker", "catalog-api", "recommendation-api",
		"email-worker", "fraud-scorer", "summarizer-worker", "partner-sync-worker",
	} {
		reserved[n] = true
	}
	var pool []string
	for _, n := range serviceNames() {
		if !reserved[n] {
			pool = append(pool, n)
		}
	}
	notableKeys := map[string]bool{
		"key_acme_0007": true, "key_initech_0013": true, "key_globex_0021": true,
		"key_globex_0042": true, "key_umbrella_0005": true,
	}
	mixes := routeMixes()
	var bg []stream
	total := 0
	for _, p := range projectSpecs() {
		total += p.keys
	}
	created := 0
	for _, p := range projectSpecs() {
		services := make([]string, 0, p.services)
		for _, i := range b.rng.Perm(len(pool))[:p.services] {
			services = append(services, pool[i])
		}
		for n := 1; n <= p.keys; n++ {
			key := keyID(p.name, n)
			// Spread the created events over the first second so the initial burst is
			// ordered and every key exists before its first use.
			e := b.created(p.name, key, time.Duration(created)*usageStartsAt/time.Duration(total)-b.s.cfg.History, 0)
			created++
			if notableKeys[key] {
				// Their story is told by their own events; a random TTL or budget would
				// only blur it.
				e.ExpiresAt, e.Budget = nil, nil
				continue
			}
			callers := 1
			if u := b.rng.Float64(); u > 0.85 {
				callers = 3
			} else if u > 0.5 {
				callers = 2
			}
			for _, i := range b.rng.Perm(len(services))[:callers] {
				bg = append(bg, stream{
					project: p.name, key: key, service: services[i],
					// Log-normal weights: a few heavy callers and a long quiet tail.
					rate:      math.Exp(1.2 * b.rng.NormFloat64()),
					phases:    []phase{{b.usageFrom(), 1}},
					routes:    mixes[b.rng.IntN(len(mixes))],
					instances: gateways(p.name),
					clientIP:  b.clientIP(p.name, services[i]),
				})
			}
		}
	}
	sum := 0.0
	for _, st := range bg {
		sum += st.rate
	}
	for i := range bg {
		bg[i].rate *= b.s.cfg.Rate * (1 - notableShare) / sum
	}
	b.s.streams = append(b.s.streams, bg...)
}

// created records a created event for key at offset off; expiresAt (0 = none) is its TTL.
func (b *builder) created(project, key string, off, expiresAt time.Duration) *keytrailv1.LifecycleEvent {
	e := &keytrailv1.LifecycleEvent{
		Project: project, KeyId: key, Action: keytrailv1.Action_ACTION_CREATED,
		Scopes: scopeSets()[b.rng.IntN(len(scopeSets()))],
	}
	switch b.lcSeq % 3 {
	case 0:
		e.Actor, e.ActorType = creatorUsers()[b.rng.IntN(len(creatorUsers()))], keytrailv1.ActorType_ACTOR_TYPE_USER
		e.Attributes = map[string]string{"ticket": fmt.Sprintf("OPS-%d", 1000+b.rng.IntN(9000)), "tool": "keyctl/2.3.1"}
	case 1:
		e.Actor, e.ActorType = creatorServices()[b.rng.IntN(len(creatorServices()))], keytrailv1.ActorType_ACTOR_TYPE_SERVICE
		e.Attributes = map[string]string{"pipeline": "infra-" + project, "workspace": project + "-prod"}
	default:
		e.Actor, e.ActorType = "system", keytrailv1.ActorType_ACTOR_TYPE_SYSTEM
		e.Reason = "provisioned with the project"
	}
	if expiresAt > 0 {
		e.ExpiresAt = timestamppb.New(b.at(expiresAt))
	} else if b.rng.IntN(10) < 3 {
		e.ExpiresAt = timestamppb.New(b.at(time.Duration(30+b.rng.IntN(335)) * 24 * time.Hour))
	}
	if b.rng.IntN(5) == 0 {
		e.Budget = &keytrailv1.Budget{
			AmountMicros: int64(50+b.rng.IntN(450)) * 1_000_000, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_MONTH,
		}
	}
	b.lifecycle(off, e)
	return e
}

// idSpace is the namespace of simulated event ids (a fixed UUID made up for it).
var idSpace = uuid.MustParse("6f1c2f4e-3a57-4c52-9a39-6b9d1f2e7c10")

// eventID is a name-based (SHA-1, version 5) UUID of the run and the event's place in it
// (name): a pure function of Seed, Start and that place, so every way of slicing time gives
// the same ids and another run gets others.
func (s *Scenario) eventID(name string) string {
	return uuid.NewSHA1(idSpace, []byte(fmt.Sprintf("%016x-%s", s.runID, name))).String()
}

// lifecycle stamps a lifecycle event with its id and time and adds it to the history.
func (b *builder) lifecycle(off time.Duration, e *keytrailv1.LifecycleEvent) {
	e.EventId = b.s.eventID(fmt.Sprintf("lc-%d", b.lcSeq))
	b.lcSeq++
	e.Time = timestamppb.New(b.at(off))
	b.s.lifecycle = append(b.s.lifecycle, event.Event{Kind: event.KindLifecycle, Lifecycle: e})
}

func (b *builder) stream(project, key, service string, share float64, phases []phase, routes []route) stream {
	return stream{
		project: project, key: key, service: service, rate: share * b.s.cfg.Rate, phases: phases,
		routes: routes, instances: gateways(project), clientIP: b.clientIP(project, service),
	}
}

func (b *builder) rotation() {
	const project, oldKey, newKey = "acme", "key_acme_0007", "key_acme_0081"
	n := &b.s.notable
	n.RotationOldKey, n.RotationNewKey, n.RotatedAt = oldKey, newKey, b.at(rotatedAt)
	n.RotationMovedServices = []string{"checkout-api", "billing-api"}
	n.RotationMixedServices = []string{"invoice-worker", "search-api"}
	n.RotationPendingServices = []string{"ledger-sync-cron", "support-bot"}
	n.RotationSplitAt, n.RotationMovedBy = b.at(rotationSplitAt), b.at(rotationLastMoveAt)

	b.lifecycle(rotationNewKeyAt, &keytrailv1.LifecycleEvent{
		Project: project, KeyId: newKey, Action: keytrailv1.Action_ACTION_CREATED,
		Actor: "dana", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Scopes: []string{"chat", "embeddings"},
		Reason: "replacement for " + oldKey, Attributes: map[string]string{"ticket": "SEC-2291"},
	})
	b.lifecycle(rotatedAt, &keytrailv1.LifecycleEvent{
		Project: project, KeyId: oldKey, Action: keytrailv1.Action_ACTION_ROTATED, NewKeyId: newKey,
		Actor: "dana", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Reason: "scheduled 90-day rotation",
		Attributes: map[string]string{"ticket": "SEC-2291", "tool": "keyctl/2.3.1"},
	})
	routes := []route{gpt4o(), embedding()}
	for i, svc := range n.RotationMovedServices {
		moveAt := rotationSplitAt + time.Duration(i)*(rotationLastMoveAt-rotationSplitAt)
		b.s.streams = append(b.s.streams,
			b.stream(project, oldKey, svc, rotationShare, []phase{{b.usageFrom(), 1}, {moveAt, 0}}, routes),
			b.stream(project, newKey, svc, rotationShare, []phase{{moveAt, 1}}, routes))
	}
	gw := gateways(project)
	for _, svc := range n.RotationMixedServices {
		old := b.stream(project, oldKey, svc, rotationShare, []phase{{b.usageFrom(), 1}, {rotationSplitAt, 0.5}}, routes)
		moved := b.stream(project, newKey, svc, rotationShare, []phase{{rotationSplitAt, 0.5}}, routes)
		// Split by gateway instance, as a half-finished redeploy does: the redeployed pods
		// send the new key. (A gateway sees the caller's key on every request; which of its
		// own instances served it is what tells the two halves apart.)
		moved.instances = gw[:1]
		old.instances = gw[1:]
		b.s.streams = append(b.s.streams, old, moved)
	}
	for _, svc := range n.RotationPendingServices {
		b.s.streams = append(b.s.streams, b.stream(project, oldKey, svc, rotationShare, []phase{{b.usageFrom(), 1}}, routes))
	}
}

func (b *builder) disabled() {
	const project, key, job = "initech", "key_initech_0013", "legacy-export-cron"
	n := &b.s.notable
	n.DisabledKey, n.DisabledAt, n.ForgottenJobService, n.ForgottenJobStatus = key, b.at(disabledAt), job, statusDisabled
	b.lifecycle(disabledAt, &keytrailv1.LifecycleEvent{
		Project: project, KeyId: key, Action: keytrailv1.Action_ACTION_DISABLED,
		Actor: "carol", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Reason: "key found in a public CI log",
		Attributes: map[string]string{"ticket": "SEC-2304", "severity": "high"},
	})
	api := b.stream(project, key, "report-api", disabledShare, []phase{{b.usageFrom(), 1}, {disabledAt, 0}}, []route{gpt4oMini()})
	api.disabledAt = disabledAt
	b.s.streams = append(b.s.streams, api)
	cron := b.stream(project, key, job, 0, nil, []route{gpt4oMini()})
	cron.disabledAt = disabledAt
	b.s.crons = append(b.s.crons, cron)
}

func (b *builder) spike() {
	const project, key = "globex", "key_globex_0021"
	n := &b.s.notable
	n.SpikeKey, n.SpikeStart, n.SpikeEnd, n.SpikeFactor = key, b.at(spikeFrom), b.at(spikeUntil), spikeFactor
	phases := []phase{{b.usageFrom(), 1}, {spikeFrom, spikeFactor}, {spikeUntil, 1}}
	b.s.streams = append(b.s.streams,
		b.stream(project, key, "search-worker", spikeShare, phases, []route{embedding(), gpt4oMini()}),
		b.stream(project, key, "catalog-api", spikeShare, phases, []route{gpt4oMini()}))
}

func (b *builder) newCaller() {
	const project, key, caller = "globex", "key_globex_0042", "fraud-scorer"
	n := &b.s.notable
	n.NewCallerKey, n.NewCallerService, n.NewCallerFrom = key, caller, b.at(newCallerFrom)
	b.s.streams = append(b.s.streams,
		b.stream(project, key, "recommendation-api", newCallerShare, []phase{{b.usageFrom(), 1}}, []route{haiku()}),
		b.stream(project, key, "email-worker", newCallerShare, []phase{{b.usageFrom(), 1}}, []route{gpt4oMini()}),
		b.stream(project, key, caller, newCallerShare, []phase{{newCallerFrom, 1}}, []route{sonnet()}))
}

func (b *builder) overBudget() {
	const project, key, caller = "umbrella", "key_umbrella_0005", "summarizer-worker"
	st := b.stream(project, key, caller, budgetShare, []phase{{b.usageFrom(), 1}}, []route{sonnet()})
	// Sized from the expected spend so the key crosses it about budgetCrossedAround into the
	// run at any Rate; rounded down to whole cents.
	perSecond := st.rate * okShare * sonnet().meanOKCost()
	budget := int64(perSecond*(budgetCrossedAround-usageStartsAt).Seconds()) / 10_000 * 10_000
	n := &b.s.notable
	n.OverBudgetKey, n.BudgetMicros, n.BudgetSetAt, n.BudgetCrossedAround = key, budget, b.at(budgetSetAt), b.at(budgetCrossedAround)
	b.lifecycle(budgetSetAt, &keytrailv1.LifecycleEvent{
		Project: project, KeyId: key, Action: keytrailv1.Action_ACTION_BUDGET_CHANGED,
		Actor: "erin", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Reason: "cap spend during the pilot",
		Budget:     &keytrailv1.Budget{AmountMicros: budget, Period: keytrailv1.BudgetPeriod_BUDGET_PERIOD_DAY},
		Changes:    []*keytrailv1.FieldChange{{Field: "budget", Before: "none", After: fmt.Sprintf("%d micros/day", budget)}},
		Attributes: map[string]string{"ticket": "FIN-733"},
	})
	b.s.streams = append(b.s.streams, st)
}

func (b *builder) expiring() {
	const project, key, caller = "initech", "key_initech_0061", "partner-sync-worker"
	n := &b.s.notable
	n.ExpiringKey, n.ExpiresAt, n.ExpiredCaller = key, b.at(expiresAfter), caller
	b.created(project, key, expiringCreatedAt, expiresAfter).Budget = nil
	st := b.stream(project, key, caller, expiringShare, []phase{{expiringCreatedAt + time.Second, 1}}, []route{gpt4o()})
	st.expiresAt = expiresAfter
	b.s.streams = append(b.s.streams, st)
}

func (b *builder) scopesChanged() {
	const project, key = "acme", "key_acme_0003"
	n := &b.s.notable
	n.ScopesChangedKey, n.ScopesChangedAt = key, b.at(scopesChangedAt)
	b.lifecycle(scopesChangedAt, &keytrailv1.LifecycleEvent{
		Project: project, KeyId: key, Action: keytrailv1.Action_ACTION_SCOPES_CHANGED,
		Actor: "bob", ActorType: keytrailv1.ActorType_ACTOR_TYPE_USER, Reason: "search team needs embeddings",
		Scopes:     []string{"chat", "embeddings"},
		Changes:    []*keytrailv1.FieldChange{{Field: "scopes", Before: "chat", After: "chat,embeddings"}},
		Attributes: map[string]string{"ticket": "SEC-2310", "approved_by": "alice"},
	})
}

// mix is SplitMix64's finaliser: it turns nearby inputs (seeds, second numbers) into
// unrelated 64-bit values, so neighbouring seeds and buckets do not draw correlated numbers.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}
