package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/bulsajo/bulsajo/internal/ports"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// DefaultStartTimeout bounds how long StartEmbedded waits for the member to
// be ready (elected and serving).
const DefaultStartTimeout = 30 * time.Second

// Embedded is a single-member etcd running inside this process, serving on
// loopback. Its data lives in the data directory and survives a restart.
type Embedded struct {
	etcd      *embed.Etcd
	store     *Etcd
	clientURL string
	peerURL   string
	closeOnce sync.Once
	closeErr  error
}

type embeddedConfig struct {
	clientPort, peerPort int
	startTimeout         time.Duration
	logger               *zap.Logger
	storeOpts            []EtcdOption
}

// EmbeddedOption configures StartEmbedded.
type EmbeddedOption func(*embeddedConfig)

// WithPorts sets the loopback client and peer ports (default: free ports
// chosen at start; 0 keeps that default for one of them).
func WithPorts(client, peer int) EmbeddedOption {
	return func(c *embeddedConfig) { c.clientPort, c.peerPort = client, peer }
}

// WithStartTimeout bounds the wait for the member to be ready (default
// DefaultStartTimeout).
func WithStartTimeout(d time.Duration) EmbeddedOption {
	return func(c *embeddedConfig) { c.startTimeout = d }
}

// WithServerLogger sets the etcd server's logger (default: none).
func WithServerLogger(lg *zap.Logger) EmbeddedOption {
	return func(c *embeddedConfig) { c.logger = lg }
}

// WithStoreOptions are passed to OpenEtcd for the client Store returns
// (WithPrefix, WithLogger...).
func WithStoreOptions(opts ...EtcdOption) EmbeddedOption {
	return func(c *embeddedConfig) { c.storeOpts = append(c.storeOpts, opts...) }
}

const embeddedName = "bulsajo"

// StartEmbedded starts a single-member etcd with its data in dataDir
// (created if missing; an existing one is reopened with its data) and
// returns once it serves, or fails after the start timeout.
func StartEmbedded(ctx context.Context, dataDir string, opts ...EmbeddedOption) (*Embedded, error) {
	cfg := embeddedConfig{startTimeout: DefaultStartTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.startTimeout)
	defer cancel()
	var (
		e   *embed.Etcd
		err error
	)
	// A port chosen free can be taken before etcd binds it: choose again.
	for attempt := 0; ; attempt++ {
		e, err = startEmbedded(dataDir, &cfg)
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || attempt == 2 ||
			(cfg.clientPort != 0 && cfg.peerPort != 0) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: embedded etcd in %s: %w", dataDir, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err = <-e.Err():
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("store: embedded etcd in %s not ready: %w", dataDir, err)
	}
	m := &Embedded{
		etcd:      e,
		clientURL: e.Config().AdvertiseClientUrls[0].String(),
		peerURL:   e.Config().AdvertisePeerUrls[0].String(),
	}
	m.store, err = OpenEtcd(ctx, []string{m.clientURL}, cfg.storeOpts...)
	if err == nil {
		err = m.updatePeerURL(ctx)
	}
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("store: embedded etcd in %s: %w", dataDir, err)
	}
	return m, nil
}

func startEmbedded(dataDir string, cfg *embeddedConfig) (*embed.Etcd, error) {
	clientPort, peerPort := cfg.clientPort, cfg.peerPort
	if clientPort == 0 || peerPort == 0 {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		if clientPort == 0 {
			clientPort = ports[0]
		}
		if peerPort == 0 {
			peerPort = ports[1]
		}
	}
	curl := loopbackURL(clientPort)
	purl := loopbackURL(peerPort)

	ec := embed.NewConfig()
	ec.Name = embeddedName
	ec.Dir = dataDir
	ec.ListenClientUrls = []url.URL{curl}
	ec.AdvertiseClientUrls = []url.URL{curl}
	ec.ListenPeerUrls = []url.URL{purl}
	ec.AdvertisePeerUrls = []url.URL{purl}
	ec.InitialCluster = embeddedName + "=" + purl.String()
	ec.InitialClusterToken = "bulsajo-embedded"
	// A lone member needs no slack for network delay: elect at once.
	ec.TickMs, ec.ElectionMs = 10, 100
	// Keep one hour of history so the data file does not grow forever.
	ec.AutoCompactionMode, ec.AutoCompactionRetention = embed.CompactorModePeriodic, "1h"
	// Even at level error etcd logs benign noise on every start and stop
	// ("failed to update storage version", "mux: server closed"); failures
	// that matter reach the caller through StartEmbedded and the client.
	lg := cfg.logger
	if lg == nil {
		lg = zap.NewNop()
	}
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	return embed.StartEtcd(ec)
}

// updatePeerURL records this start's peer URL in the membership when the
// data directory was created with another one (the ports are chosen anew
// on each start), so the member list never points at a stale port.
func (m *Embedded) updatePeerURL(ctx context.Context) error {
	c := m.store.client
	resp, err := c.MemberList(ctx)
	if err != nil {
		return err
	}
	id := uint64(m.etcd.Server.MemberID())
	for _, mem := range resp.Members {
		if mem.ID == id && (len(mem.PeerURLs) != 1 || mem.PeerURLs[0] != m.peerURL) {
			_, err = c.MemberUpdate(ctx, id, []string{m.peerURL})
			return err
		}
	}
	return nil
}

func loopbackURL(port int) url.URL {
	return url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(port))}
}

// freePorts returns n distinct loopback ports free at the time of the call,
// from below the ephemeral range (see package ports: no outgoing connection
// takes them before etcd binds them).
func freePorts(n int) ([]int, error) {
	var out []int
	for len(out) < n {
		p, err := ports.Free("127.0.0.1")
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out, nil
}

// Store returns the client of this member. It belongs to the Embedded:
// Close closes it (closing it yourself is harmless).
func (m *Embedded) Store() *Etcd { return m.store }

// ClientURL is the member's client URL ("http://127.0.0.1:PORT"), for
// OpenEtcd from elsewhere.
func (m *Embedded) ClientURL() string { return m.clientURL }

// Close closes the client, then stops the member: in-flight requests get
// a short grace period and the data is synced to disk. Later calls return
// the first one's result.
func (m *Embedded) Close() error {
	m.closeOnce.Do(func() {
		if m.store != nil {
			m.store.Close()
		}
		m.etcd.Close()
		select {
		case <-m.etcd.Server.StopNotify():
		case <-time.After(10 * time.Second):
			m.closeErr = errors.New("store: embedded etcd did not stop within 10s")
		}
	})
	return m.closeErr
}
