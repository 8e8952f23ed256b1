package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/bulsajo/bulsajo/internal/store"
)

// DefaultDialTimeout bounds how long OpenEtcd waits for an endpoint.
const DefaultDialTimeout = 5 * time.Second

// Etcd is a store.Store over an etcd v3 cluster (embedded or external). Revisions
// are etcd's: Put and CompareAndPut return the cluster revision of the
// write, Get and List report each key's ModRevision.
type Etcd struct {
	client *clientv3.Client
	kv     clientv3.KV
	prefix string // WithPrefix's, already applied by kv; elections need it (election.go)
	closed atomic.Bool
}

var _ store.Store = (*Etcd)(nil)

type etcdConfig struct {
	dialTimeout time.Duration
	tls         *tls.Config
	username    string
	password    string
	prefix      string
	logger      *zap.Logger
}

// EtcdOption configures OpenEtcd.
type EtcdOption func(*etcdConfig)

// WithDialTimeout sets how long OpenEtcd waits for an endpoint to answer
// (default DefaultDialTimeout).
func WithDialTimeout(d time.Duration) EtcdOption {
	return func(c *etcdConfig) { c.dialTimeout = d }
}

// WithTLS connects over TLS (client certificates go in cfg.Certificates).
// Endpoints are then https:// URLs.
func WithTLS(cfg *tls.Config) EtcdOption {
	return func(c *etcdConfig) { c.tls = cfg }
}

// WithAuth authenticates with etcd's user/password auth.
func WithAuth(username, password string) EtcdOption {
	return func(c *etcdConfig) { c.username, c.password = username, password }
}

// WithPrefix confines the store to the keys under prefix: every key is
// stored as prefix+key and List and Get see only that part of the keyspace.
// One cluster can so hold several jobs (prefix "/bulsajo/<run-id>/").
func WithPrefix(prefix string) EtcdOption {
	return func(c *etcdConfig) { c.prefix = prefix }
}

// WithLogger sets the etcd client's logger (default: none; errors are
// returned to the caller, not logged).
func WithLogger(lg *zap.Logger) EtcdOption {
	return func(c *etcdConfig) { c.logger = lg }
}

// OpenEtcd connects to the etcd cluster at endpoints ("http://host:2379";
// give every member so that the client fails over) and returns once one
// of them has answered, or fails (with store.ErrUnavailable) when none has
// within the dial timeout or ctx is done first.
func OpenEtcd(ctx context.Context, endpoints []string, opts ...EtcdOption) (*Etcd, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(endpoints) == 0 {
		return nil, errors.New("store: etcd: no endpoints given")
	}
	cfg := etcdConfig{dialTimeout: DefaultDialTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	lg := cfg.logger
	if lg == nil {
		lg = zap.NewNop()
	}
	client, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: cfg.dialTimeout,
		// Notice a member that went silent (not just one whose process
		// died, which closes the connection at once) and move on.
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  cfg.tls,
		Username:             cfg.username,
		Password:             cfg.password,
		Logger:               lg,
	})
	if err != nil {
		return nil, fmt.Errorf("store: etcd %v: %w", endpoints, err)
	}
	if err := probe(ctx, client, cfg.dialTimeout); err != nil {
		client.Close()
		return nil, err
	}
	e := &Etcd{client: client, kv: client.KV, prefix: cfg.prefix}
	if cfg.prefix != "" {
		e.kv = namespace.NewKV(client.KV, cfg.prefix)
	}
	return e, nil
}

// probe waits until one endpoint answers a Status call: clientv3.New does
// not dial, so without it a wrong address would only show on first use.
func probe(parent context.Context, c *clientv3.Client, timeout time.Duration) error {
	ctx := parent
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(parent, timeout)
		defer cancel()
	}
	eps := c.Endpoints()
	errc := make(chan error, len(eps))
	for _, ep := range eps {
		go func() {
			_, err := c.Status(ctx, ep)
			if err != nil {
				// gRPC waits for a connection and reports only the
				// deadline; a plain dial says why (refused, no route...).
				if derr := dialCheck(ep); derr != nil {
					err = derr
				}
				err = fmt.Errorf("%s: %w", ep, err)
			}
			errc <- err
		}()
	}
	var errs []string
	for range eps {
		err := <-errc
		if err == nil {
			return nil
		}
		errs = append(errs, err.Error())
	}
	if err := parent.Err(); err != nil {
		return fmt.Errorf("store: etcd %v: %w", eps, err)
	}
	return fmt.Errorf("%w: no endpoint answered within %v: %s", store.ErrUnavailable, timeout, strings.Join(errs, "; "))
}

// dialCheck opens (and closes) a TCP connection to an http(s)://host:port
// or host:port endpoint; other forms pass.
func dialCheck(ep string) error {
	host := ep
	if u, err := url.Parse(ep); err == nil && (u.Scheme == "http" || u.Scheme == "https") {
		host = u.Host
	} else if strings.Contains(ep, "://") || strings.HasPrefix(ep, "unix") {
		return nil
	}
	conn, err := net.DialTimeout("tcp", host, time.Second)
	if err != nil {
		return err
	}
	conn.Close()
	return nil
}

// Endpoints returns the endpoints the client was opened with.
func (e *Etcd) Endpoints() []string { return e.client.Endpoints() }

func (e *Etcd) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if e.closed.Load() {
		return store.ErrClosed
	}
	return nil
}

// fail maps a client error: store.ErrClosed after Close, ctx's own error when it
// is done, store.ErrUnavailable (wrapped with the cause) when etcd could not serve.
func (e *Etcd) fail(ctx context.Context, op, key string, err error) error {
	if e.closed.Load() {
		return store.ErrClosed
	}
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if unavailable(err) {
		return fmt.Errorf("store: etcd %s %q: %w: %w", op, key, store.ErrUnavailable, err)
	}
	return fmt.Errorf("store: etcd %s %q: %w", op, key, err)
}

func unavailable(err error) bool {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code() == codes.Unavailable
	}
	return status.Code(err) == codes.Unavailable
}

// Put implements store.Store.
func (e *Etcd) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := e.check(ctx); err != nil {
		return 0, err
	}
	resp, err := e.kv.Put(ctx, key, string(value))
	if err != nil {
		return 0, e.fail(ctx, "put", key, err)
	}
	return resp.Header.Revision, nil
}

// Get implements store.Store.
func (e *Etcd) Get(ctx context.Context, key string) (store.KV, error) {
	if err := e.check(ctx); err != nil {
		return store.KV{}, err
	}
	resp, err := e.kv.Get(ctx, key)
	if err != nil {
		return store.KV{}, e.fail(ctx, "get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, store.ErrNotFound
	}
	kv := resp.Kvs[0]
	return store.KV{Key: string(kv.Key), Value: kv.Value, Revision: kv.ModRevision}, nil
}

// List implements store.Store. It reads all the keys under prefix in one
// consistent request (one revision); keep prefixes small.
func (e *Etcd) List(ctx context.Context, prefix string) ([]store.KV, error) {
	if err := e.check(ctx); err != nil {
		return nil, err
	}
	resp, err := e.kv.Get(ctx, prefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, e.fail(ctx, "list", prefix, err)
	}
	var out []store.KV
	for _, kv := range resp.Kvs {
		out = append(out, store.KV{Key: string(kv.Key), Value: kv.Value, Revision: kv.ModRevision})
	}
	return out, nil
}

// CompareAndPut implements store.Store with one transaction: the key's
// ModRevision must be rev, or for rev 0 the key must not exist
// (CreateRevision 0).
func (e *Etcd) CompareAndPut(ctx context.Context, key string, value []byte, rev int64) (int64, error) {
	if err := e.check(ctx); err != nil {
		return 0, err
	}
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", rev)
	if rev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
	}
	resp, err := e.kv.Txn(ctx).If(cmp).Then(clientv3.OpPut(key, string(value))).Commit()
	if err != nil {
		return 0, e.fail(ctx, "compare-and-put", key, err)
	}
	if !resp.Succeeded {
		return 0, store.ErrConflict
	}
	return resp.Header.Revision, nil
}

// Close implements store.Store. It is safe to call more than once; calls made
// after it return store.ErrClosed.
func (e *Etcd) Close() error {
	if e.closed.Swap(true) {
		return nil
	}
	if err := e.client.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("store: etcd close: %w", err)
	}
	return nil
}
