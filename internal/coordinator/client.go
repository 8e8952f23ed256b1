package coordinator

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/bulsajo/bulsajo/internal/auth"
	"github.com/bulsajo/bulsajo/internal/events"
)

// Client is the admin side of the coordinator's API (submit, status,
// release). Addrs are tried in order: with several coordinators only the
// leader listens.
type Client struct {
	Addrs []string
	Token string
	TLS   *tls.Config
	http  *http.Client
	next  atomic.Int64 // index of the address that answered last
}

// NewClient returns a client for host:port addresses.
func NewClient(addrs []string, token string, tlsCfg *tls.Config) *Client {
	d := &net.Dialer{Timeout: 2 * time.Second}
	tr := &http.Transport{TLSClientConfig: tlsCfg, ResponseHeaderTimeout: 10 * time.Second, DialContext: d.DialContext}
	return &Client{Addrs: addrs, Token: token, TLS: tlsCfg, http: &http.Client{Transport: tr}}
}

// ErrUnreachable: no coordinator address answered.
var ErrUnreachable = errors.New("coordinator: no coordinator answered")

// APIError is an error the coordinator answered with.
type APIError struct {
	Status int
	Msg    string
}

func (e *APIError) Error() string { return e.Msg }

func (c *Client) url(addr, path string) string {
	scheme := "http"
	if c.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + addr + path
}

// do sends one request to the first coordinator that answers.
func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var last error = ErrUnreachable
	for k := range c.Addrs {
		// Start with the one that answered last (the leader).
		idx := (int(c.next.Load()) + k) % len(c.Addrs)
		addr := c.Addrs[idx]
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequestWithContext(ctx, method, c.url(addr, path), rd)
		if err != nil {
			return nil, err
		}
		if c.Token != "" {
			auth.SetBearer(req.Header, c.Token)
		}
		resp, err := c.http.Do(req)
		if err != nil {
			last = fmt.Errorf("%w: %v", ErrUnreachable, err)
			continue
		}
		c.next.Store(int64(idx))
		if resp.StatusCode >= 300 {
			defer resp.Body.Close()
			var e struct {
				Error string `json:"error"`
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
			if json.Unmarshal(b, &e) != nil || e.Error == "" {
				e.Error = strings.TrimSpace(string(b))
			}
			return nil, &APIError{Status: resp.StatusCode, Msg: e.Error}
		}
		return resp, nil
	}
	return nil, last
}

func (c *Client) call(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Submit starts a job.
func (c *Client) Submit(ctx context.Context, sp JobSpec) error {
	return c.call(ctx, "POST", "/v1/jobs", sp, nil)
}

// Cancel asks the job to stop.
func (c *Client) Cancel(ctx context.Context, id string) error {
	return c.call(ctx, "POST", "/v1/jobs/"+id+"/cancel", nil, nil)
}

// Status returns the cluster's status.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, "GET", "/v1/status", nil, &st)
	return st, err
}

// Release takes a node out of quarantine.
func (c *Client) Release(ctx context.Context, name string) (bool, error) {
	var out struct {
		Released bool `json:"released"`
	}
	err := c.call(ctx, "POST", "/v1/nodes/"+name+"/release", nil, &out)
	return out.Released, err
}

// Follow calls fn for each event of job id from event number from, and
// returns when the job has finished (its run_finished event), ctx ends, or
// the coordinator cannot be reached for wait. A broken stream (a coordinator
// restart or failover) is resumed where it stopped.
func (c *Client) Follow(ctx context.Context, id string, from int, wait time.Duration, fn func(events.Event)) (events.Event, error) {
	down := time.Time{}
	for {
		resp, err := c.do(ctx, "GET", fmt.Sprintf("/v1/jobs/%s/events?from=%d", id, from), nil)
		if err == nil {
			down = time.Time{}
			// The coordinator writes at least a blank line a second: a
			// stream silent for longer is a dead coordinator (or a cut one).
			alive := make(chan struct{}, 1)
			stop := make(chan struct{})
			go func(body io.Closer) {
				for {
					select {
					case <-alive:
					case <-stop:
						return
					case <-time.After(5 * time.Second):
						body.Close()
						return
					}
				}
			}(resp.Body)
			sc := bufio.NewScanner(resp.Body)
			sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
			for sc.Scan() {
				select {
				case alive <- struct{}{}:
				default:
				}
				line := bytes.TrimSpace(sc.Bytes())
				if len(line) == 0 {
					continue
				}
				var e events.Event
				if json.Unmarshal(line, &e) != nil {
					continue
				}
				from++
				fn(e)
				if e.Type == events.RunFinished {
					close(stop)
					resp.Body.Close()
					return e, nil
				}
			}
			close(stop)
			resp.Body.Close()
		} else {
			var ae *APIError
			if errors.As(err, &ae) {
				return events.Event{}, err
			}
		}
		if ctx.Err() != nil {
			return events.Event{}, ctx.Err()
		}
		if down.IsZero() {
			down = time.Now()
		} else if time.Since(down) > wait {
			return events.Event{}, fmt.Errorf("%w for %s", ErrUnreachable, wait)
		}
		select {
		case <-ctx.Done():
			return events.Event{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
