package taskstream_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// server is a `taskstream serve` process on a temp SQLite file.
type server struct {
	URL  string
	Addr string
}

// startServer runs `node bin/taskstream.js serve --port 0` from the repository
// this module sits in, and waits for its "taskstream listening" log line.
// -short skips the tests that need it.
func startServer(t *testing.T) *server {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no taskstream server")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the tests run a real taskstream server and need node on PATH: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, filepath.Join(root, "bin", "taskstream.js"), "serve",
		"--port", "0", "--database", filepath.Join(t.TempDir(), "taskstream.db"), "--shutdown-drain-ms", "0")
	cmd.Dir = root
	cmd.Env = withoutTaskstreamSettings(os.Environ())
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	listening := make(chan string, 1)
	go func() {
		lines := bufio.NewScanner(stdout)
		lines.Buffer(make([]byte, 1<<20), 1<<20)
		for lines.Scan() {
			var entry struct{ Msg, URL string }
			if json.Unmarshal(lines.Bytes(), &entry) == nil && entry.Msg == "taskstream listening" && entry.URL != "" {
				listening <- entry.URL
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case url := <-listening:
		host := url[len("http://"):]
		return &server{URL: url, Addr: host}
	case <-time.After(60 * time.Second):
		t.Fatal("no \"taskstream listening\" line within 60 s")
		return nil
	}
}

func withoutTaskstreamSettings(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if len(kv) < len("TASKSTREAM_") || kv[:len("TASKSTREAM_")] != "TASKSTREAM_" {
			out = append(out, kv)
		}
	}
	return out
}

// proxy forwards TCP connections to a target and can cut them all, to
// stand in for a network that drops a client's connection.
type proxy struct {
	Addr   string
	target string
	ln     net.Listener
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	down   bool
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() { ln.Close(); p.setDown(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *proxy) serve(c net.Conn) {
	p.mu.Lock()
	if p.down {
		p.mu.Unlock()
		c.Close()
		return
	}
	p.mu.Unlock()
	upstream, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[upstream] = struct{}{}, struct{}{}
	p.mu.Unlock()
	go func() { _, _ = io.Copy(upstream, c); upstream.Close() }()
	_, _ = io.Copy(c, upstream)
	c.Close()
}

// setDown(true) closes every connection and refuses new ones until setDown(false).
func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}
