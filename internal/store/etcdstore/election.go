package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/bulsajo/bulsajo/internal/store"
)

// ErrNotLeader is returned by the writes of a Leadership's Store once that
// leadership is over: etcd refused them because the election key they are
// fenced on is gone (or belongs to another term).
var ErrNotLeader = errors.New("etcdstore: not leader")

// DefaultElectionTTL is the session TTL of Campaign, in seconds: the longest
// a dead or cut-off leader keeps the office before a standby can take over.
//
// 2 s is the smallest TTL that is reliable. etcd raises any TTL below
// ceil(1.5 × election timeout) to that minimum, which is 2 s with etcd's
// default timing (100 ms heartbeat, 1 s election timeout), so 1 s would
// silently become 2 s on a default cluster anyway. And the client renews a
// lease every TTL/3, rounded up to its 500 ms keep-alive tick: every 0.5 s
// at TTL 1, leaving a renewal well under half a second of slack (a GC
// pause, a slow fsync, an etcd member failing over) before the leader
// steps down; at TTL 2 renewals go every second and one may be late by
// most of a second.
const DefaultElectionTTL = 2

// electionKeyspace is where the elections live, under the store's prefix:
// the candidates of election "coordinator" are the keys
// <prefix>/_election/coordinator/<lease id in hex>, and the leader is the
// oldest one (etcd's concurrency.Election layout).
const electionKeyspace = "/_election/"

type campaignConfig struct{ ttl int }

// CampaignOption configures Campaign.
type CampaignOption func(*campaignConfig)

// WithTTL sets the candidate's session TTL in seconds (default
// DefaultElectionTTL). A smaller TTL fails over faster but tolerates shorter
// stalls; etcd may raise it to its minimum lease TTL.
func WithTTL(seconds int) CampaignOption {
	return func(c *campaignConfig) { c.ttl = seconds }
}

// Leadership is one term of office won by Campaign. It lasts while the
// candidate's etcd session lives and its election key exists; Done is closed
// when it ends. Done is advisory: it closes once a renewal of the session is
// overdue (7/8 of the TTL after the last one), which is normally before etcd
// can expire the lease and elect a standby, but a stalled process cannot
// count on it. What makes a deposed leader harmless is Store, whose writes
// etcd refuses once the term is over.
type Leadership struct {
	c        *candidacy
	election string
	value    string
	key      string // the election key, relative to the store's prefix
	rev      int64  // its create revision: the fencing token of this term
}

// candidacy is one session's election key, from the lease grant on: lost is
// closed when it can no longer be (or stay) the leader.
type candidacy struct {
	e    *Etcd
	s    *concurrency.Session
	key  string // the candidate key, as stored (with the store's prefix)
	ttl  time.Duration
	lost chan struct{}
}

// validElection checks an election name and returns its key prefix
// relative to the store's prefix (without the trailing "/").
func validElection(election string) (string, error) {
	if election == "" || strings.Contains(election, "/") {
		return "", fmt.Errorf("etcdstore: election name %q: want a non-empty name without '/'", election)
	}
	return electionKeyspace + election, nil
}

// errSessionLost: a candidate's session ended before it was elected.
var errSessionLost = errors.New("etcdstore: session lost while campaigning")

// Campaign puts value (the candidate's advertised address, say) up for
// election and blocks until this candidate is the leader, or ctx is done.
// The candidacy is held by an etcd session (a lease with the TTL of
// WithTTL, kept alive by this client): when the leader dies or loses etcd
// for longer than the TTL, the next candidate in line is elected. A
// candidate whose session is lost while it waits campaigns again with a new
// one. The election's keys live under the store's prefix, so one cluster
// holds one election of each name per prefix.
func (e *Etcd) Campaign(ctx context.Context, election, value string, opts ...CampaignOption) (*Leadership, error) {
	if err := e.check(ctx); err != nil {
		return nil, err
	}
	rel, err := validElection(election)
	if err != nil {
		return nil, err
	}
	cfg := campaignConfig{ttl: DefaultElectionTTL}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.ttl < 1 {
		return nil, fmt.Errorf("etcdstore: campaign %q: TTL %ds, want at least 1", election, cfg.ttl)
	}
	for {
		l, err := e.campaign(ctx, election, rel, value, cfg.ttl)
		if !errors.Is(err, errSessionLost) {
			return l, err
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// campaign is one candidacy, with one session.
func (e *Etcd) campaign(ctx context.Context, election, rel, value string, ttl int) (*Leadership, error) {
	// Grant the lease here, under ctx: concurrency.NewSession would grant
	// it under the client's context and block for as long as etcd is down.
	grant, err := e.client.Grant(ctx, int64(ttl))
	if err != nil {
		return nil, e.fail(ctx, "campaign", election, err)
	}
	s, err := concurrency.NewSession(e.client,
		concurrency.WithLease(grant.ID), concurrency.WithTTL(int(grant.TTL)))
	if err == nil && s == nil {
		err = context.Canceled // the client is closing
	}
	var renewals <-chan *clientv3.LeaseKeepAliveResponse
	if err == nil {
		// The session's own renewals, seen from here too (no extra traffic).
		renewals, err = e.client.KeepAlive(s.Ctx(), grant.ID)
	}
	if err != nil {
		if s != nil {
			s.Orphan()
		}
		e.revokeLater(grant.ID, ttl)
		return nil, e.fail(ctx, "campaign", election, err)
	}
	pfx := e.prefix + rel
	c := &candidacy{
		e:    e,
		s:    s,
		key:  fmt.Sprintf("%s/%x", pfx, grant.ID), // concurrency.Election's
		ttl:  time.Duration(grant.TTL) * time.Second,
		lost: make(chan struct{}),
	}
	var rev int64 // the store revision at the grant, before the key exists
	if grant.ResponseHeader != nil {
		rev = grant.Revision
	}
	go c.run(rev, renewals)

	el := concurrency.NewElection(s, pfx)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- el.Campaign(cctx, value) }()
	lost := false
	select {
	case err = <-errc:
		select {
		case <-c.lost:
			lost = true
		default:
		}
	case <-c.lost:
		lost = true
	case <-ctx.Done():
	}
	if err == nil && !lost && ctx.Err() == nil {
		return &Leadership{
			c:        c,
			election: election,
			value:    value,
			key:      strings.TrimPrefix(el.Key(), e.prefix),
			rev:      el.Rev(),
		}, nil
	}

	// Withdraw. Campaign's own clean-up (and the revoke) need etcd, which
	// may be what failed: do them in the background and stop renewing the
	// lease now, so the candidacy ends within the TTL whatever happens.
	cancel()
	s.Orphan()
	go func() {
		<-errc
		s.Close() // revokes the lease, within the TTL
	}()
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case lost:
		return nil, errSessionLost
	default:
		return nil, e.fail(ctx, "campaign", election, err)
	}
}

// revokeLater revokes a lease in the background, giving up after ttl
// seconds (it expires by then anyway).
func (e *Etcd) revokeLater(id clientv3.LeaseID, ttl int) {
	go func() {
		ctx, cancel := context.WithTimeout(e.client.Ctx(), time.Duration(ttl)*time.Second)
		defer cancel()
		e.client.Revoke(ctx, id)
	}()
}

// run closes lost when the candidacy ends: the session ended (the lease
// expired or was revoked, Resign, the client was closed), the key was
// deleted, or no renewal was confirmed for 7/8 of the TTL. The lease is
// renewed every TTL/3 or so, so that last one means several renewals went
// unanswered and etcd may be about to expire the lease: this candidate
// steps down before a standby can be elected, not after. fromRev is a
// store revision from before the key was created.
func (c *candidacy) run(fromRev int64, renewals <-chan *clientv3.LeaseKeepAliveResponse) {
	ctx := c.s.Ctx()
	gone := make(chan struct{})
	go func() {
		if c.e.watchGone(ctx, c.key, fromRev) {
			close(gone)
		}
	}()
	overdue := c.ttl - c.ttl/8
	timer := time.NewTimer(overdue)
	defer timer.Stop()
	giveUp := true
loop:
	for {
		select {
		case _, ok := <-renewals:
			if !ok {
				giveUp = false // the session ends too: expired, orphaned, closed
				break loop
			}
			timer.Reset(overdue)
		case <-timer.C:
			break loop
		case <-gone:
			break loop
		case <-c.s.Done():
			giveUp = false
			break loop
		}
	}
	close(c.lost)
	if giveUp {
		// The lease may live on: stop renewing it and let it go, so that
		// a standby is elected.
		c.s.Orphan()
		c.e.revokeLater(c.s.Lease(), int(c.ttl/time.Second))
	}
}

// watchGone returns true once key, created after fromRev, is deleted, and
// false when ctx ends first.
func (e *Etcd) watchGone(ctx context.Context, key string, fromRev int64) bool {
	next, created := fromRev+1, false
	for {
		wctx, cancel := context.WithCancel(ctx)
		for wr := range e.client.Watch(wctx, key, clientv3.WithRev(next)) {
			if wr.Err() != nil {
				break // compacted past next, or cancelled by the server
			}
			for _, ev := range wr.Events {
				if ev.Type == mvccpb.DELETE {
					cancel()
					return true
				}
				created = true
			}
		}
		cancel()
		if ctx.Err() != nil {
			return false
		}
		// The watch broke: look at the key itself, then watch again.
		resp, err := e.client.Get(ctx, key)
		if err != nil {
			select {
			case <-time.After(100 * time.Millisecond):
				continue
			case <-ctx.Done():
				return false
			}
		}
		if len(resp.Kvs) > 0 {
			created = true
		} else if created {
			return true
		}
		next = resp.Header.Revision + 1
	}
}

// Done is closed when the leadership is lost: the session expired or was
// closed, the election key was deleted, or Resign was called.
func (l *Leadership) Done() <-chan struct{} { return l.c.lost }

// Value is the value this leader campaigned with.
func (l *Leadership) Value() string { return l.value }

// Resign gives the office up: it stops renewing the session (Done is
// closed when Resign returns) and revokes its lease, which deletes the
// election key so the next candidate is elected at once. When the revoke
// fails (ctx, etcd unreachable) the error is returned and the lease expires
// within the TTL instead. Resigning again returns nil.
func (l *Leadership) Resign(ctx context.Context) error {
	l.c.s.Orphan()
	<-l.c.lost
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := l.c.e.client.Revoke(ctx, l.c.s.Lease()); err != nil &&
		!errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return l.c.e.fail(ctx, "resign", l.election, err)
	}
	return nil
}

// Store returns a view of the store whose writes are fenced on this term:
// Put and CompareAndPut are etcd transactions that also require the
// election key to still have this term's create revision, and fail with
// ErrNotLeader once it does not, whatever this process believes. Reads pass
// through. Its Close closes the view only, not the client.
func (l *Leadership) Store() store.Store { return &fencedStore{l: l} }

type fencedStore struct {
	l      *Leadership
	closed atomic.Bool
}

var _ store.Store = (*fencedStore)(nil)

func (f *fencedStore) check(ctx context.Context) error {
	if f.closed.Load() {
		return store.ErrClosed
	}
	return f.l.c.e.check(ctx)
}

// fence holds while the election key is this term's (the key is relative
// to the store's prefix: kv adds it).
func (f *fencedStore) fence() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.l.key), "=", f.l.rev)
}

func notLeader(op, key string) error {
	return fmt.Errorf("store: etcd %s %q: %w", op, key, ErrNotLeader)
}

// Put implements store.Store, fenced.
func (f *fencedStore) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := f.check(ctx); err != nil {
		return 0, err
	}
	e := f.l.c.e
	resp, err := e.kv.Txn(ctx).If(f.fence()).Then(clientv3.OpPut(key, string(value))).Commit()
	if err != nil {
		return 0, e.fail(ctx, "put", key, err)
	}
	if !resp.Succeeded {
		return 0, notLeader("put", key)
	}
	return resp.Header.Revision, nil
}

// CompareAndPut implements store.Store, fenced: ErrNotLeader when the term
// is over (whatever the key's revision), else store.ErrConflict when the
// key's revision is not rev.
func (f *fencedStore) CompareAndPut(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	if err := f.check(ctx); err != nil {
		return 0, err
	}
	e := f.l.c.e
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	if rev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	resp, err := e.kv.Txn(ctx).
		If(f.fence(), cmp).
		Then(clientv3.OpPut(key, string(value))).
		Else(clientv3.OpGet(f.l.key)).
		Commit()
	if err != nil {
		return 0, e.fail(ctx, "compare-and-put", key, err)
	}
	if !resp.Succeeded {
		if r := resp.Responses[0].GetResponseRange(); r == nil || len(r.Kvs) == 0 ||
			r.Kvs[0].CreateRevision != f.l.rev {
			return 0, notLeader("compare-and-put", key)
		}
		return 0, store.ErrConflict
	}
	return resp.Header.Revision, nil
}

// Get implements store.Store (not fenced).
func (f *fencedStore) Get(ctx context.Context, key string) (store.KV, error) {
	if err := f.check(ctx); err != nil {
		return store.KV{}, err
	}
	return f.l.c.e.Get(ctx, key)
}

// List implements store.Store (not fenced).
func (f *fencedStore) List(ctx context.Context, prefix string) ([]store.KV, error) {
	if err := f.check(ctx); err != nil {
		return nil, err
	}
	return f.l.c.e.List(ctx, prefix)
}

// Close implements store.Store: later calls on this view return
// store.ErrClosed; the client and the leadership are left alone.
func (f *fencedStore) Close() error {
	f.closed.Store(true)
	return nil
}

// Leader returns the value of the current leader of election, or
// store.ErrNotFound when there is none.
func (e *Etcd) Leader(ctx context.Context, election string) (string, error) {
	if err := e.check(ctx); err != nil {
		return "", err
	}
	rel, err := validElection(election)
	if err != nil {
		return "", err
	}
	resp, err := e.kv.Get(ctx, rel+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", e.fail(ctx, "leader", election, err)
	}
	if len(resp.Kvs) == 0 {
		return "", store.ErrNotFound
	}
	return string(resp.Kvs[0].Value), nil
}
