// Package storetest is the conformance suite every store.Store backend must
// pass: the in-process Memory store today, embedded and external etcd next.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/bulsajo/bulsajo/internal/store"
)

// Run runs the suite; open returns a fresh, empty store for each subtest
// (for a shared server: a view of an unused key prefix) and closes it in a
// t.Cleanup; the store must accept a second Close.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	ctx := context.Background()
	t.Run("PutGet", func(t *testing.T) {
		s := open(t)
		r1, err := s.Put(ctx, "/a", []byte("1"))
		if err != nil {
			t.Fatal(err)
		}
		r2, _ := s.Put(ctx, "/a", []byte("2"))
		if r2 <= r1 {
			t.Errorf("revisions must grow: %d then %d", r1, r2)
		}
		kv, err := s.Get(ctx, "/a")
		if err != nil || string(kv.Value) != "2" || kv.Revision != r2 {
			t.Errorf("Get = %+v, %v; want value 2 at revision %d", kv, err, r2)
		}
	})
	t.Run("NotFound", func(t *testing.T) {
		if _, err := open(t).Get(ctx, "/missing"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("err %v, want ErrNotFound", err)
		}
	})
	t.Run("ListPrefixInOrder", func(t *testing.T) {
		s := open(t)
		for _, k := range []string{"/run/b", "/run/a", "/other/x", "/run/c"} {
			s.Put(ctx, k, []byte(k))
		}
		kvs, err := s.List(ctx, "/run/")
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for _, kv := range kvs {
			keys = append(keys, kv.Key)
		}
		if fmt.Sprint(keys) != "[/run/a /run/b /run/c]" {
			t.Errorf("List = %v", keys)
		}
	})
	t.Run("CompareAndPut", func(t *testing.T) {
		s := open(t)
		r, err := s.CompareAndPut(ctx, "/gen", []byte("1"), 0)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		if _, err := s.CompareAndPut(ctx, "/gen", []byte("x"), 0); !errors.Is(err, store.ErrConflict) {
			t.Errorf("create over existing: %v, want ErrConflict", err)
		}
		if _, err := s.CompareAndPut(ctx, "/gen", []byte("2"), r); err != nil {
			t.Errorf("update at current revision: %v", err)
		}
		if _, err := s.CompareAndPut(ctx, "/gen", []byte("3"), r); !errors.Is(err, store.ErrConflict) {
			t.Errorf("update at stale revision: %v, want ErrConflict", err)
		}
	})
	t.Run("OneWinnerUnderContention", func(t *testing.T) {
		s := open(t)
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.CompareAndPut(ctx, "/leader", []byte("me"), 0); err == nil {
					mu.Lock()
					wins++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Errorf("%d writers won, want exactly 1", wins)
		}
	})
	t.Run("CancelledContext", func(t *testing.T) {
		c, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := open(t).Put(c, "/a", nil); !errors.Is(err, context.Canceled) {
			t.Errorf("err %v, want context.Canceled", err)
		}
	})
	t.Run("ExpiredDeadline", func(t *testing.T) {
		s := open(t)
		c, cancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
		defer cancel()
		_, errGet := s.Get(c, "/a")
		_, errList := s.List(c, "/")
		_, errCAS := s.CompareAndPut(c, "/a", nil, 0)
		for _, err := range []error{errGet, errList, errCAS} {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("err %v, want context.DeadlineExceeded", err)
			}
		}
	})
	t.Run("PerKeyRevision", func(t *testing.T) {
		// A key's revision is that of its own last write, not the store's:
		// writes to other keys do not make a CompareAndPut on it stale.
		s := open(t)
		rx, err := s.Put(ctx, "/x", []byte("x"))
		if err != nil {
			t.Fatal(err)
		}
		ry, _ := s.Put(ctx, "/y", []byte("y"))
		if ry <= rx {
			t.Errorf("revisions must grow across keys: %d then %d", rx, ry)
		}
		kv, err := s.Get(ctx, "/x")
		if err != nil || kv.Revision != rx {
			t.Errorf("Get /x = %+v, %v; want revision %d", kv, err, rx)
		}
		r2, err := s.CompareAndPut(ctx, "/x", []byte("x2"), rx)
		if err != nil || r2 <= ry {
			t.Errorf("CompareAndPut at /x's revision = %d, %v; want a revision above %d", r2, err, ry)
		}
	})
	t.Run("CompareAndPutAbsentAtRevision", func(t *testing.T) {
		if _, err := open(t).CompareAndPut(ctx, "/nope", []byte("1"), 5); !errors.Is(err, store.ErrConflict) {
			t.Errorf("absent key at revision 5: %v, want ErrConflict", err)
		}
	})
	t.Run("ValuesRoundTrip", func(t *testing.T) {
		s := open(t)
		vals := map[string][]byte{"/v/bin": {0, 0xff, 0, '\n'}, "/v/empty": {}}
		for k, v := range vals {
			if _, err := s.Put(ctx, k, v); err != nil {
				t.Fatal(err)
			}
		}
		kvs, err := s.List(ctx, "/v/")
		if err != nil || len(kvs) != len(vals) {
			t.Fatalf("List = %+v, %v", kvs, err)
		}
		for _, kv := range kvs {
			if !bytes.Equal(kv.Value, vals[kv.Key]) || kv.Revision == 0 {
				t.Errorf("List: %+v, want value %q", kv, vals[kv.Key])
			}
			if got, err := s.Get(ctx, kv.Key); err != nil || !bytes.Equal(got.Value, vals[kv.Key]) {
				t.Errorf("Get %s = %+v, %v", kv.Key, got, err)
			}
		}
	})
	t.Run("ListNoMatch", func(t *testing.T) {
		s := open(t)
		s.Put(ctx, "/run/a", nil)
		if kvs, err := s.List(ctx, "/runs/"); err != nil || len(kvs) != 0 {
			t.Errorf("List = %+v, %v; want nothing", kvs, err)
		}
	})
	t.Run("Closed", func(t *testing.T) {
		s := open(t)
		if _, err := s.Put(ctx, "/a", []byte("1")); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		_, errPut := s.Put(ctx, "/a", nil)
		_, errGet := s.Get(ctx, "/a")
		_, errList := s.List(ctx, "/")
		_, errCAS := s.CompareAndPut(ctx, "/a", nil, 0)
		for _, err := range []error{errPut, errGet, errList, errCAS} {
			if !errors.Is(err, store.ErrClosed) {
				t.Errorf("err %v, want ErrClosed", err)
			}
		}
		if err := s.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
}
