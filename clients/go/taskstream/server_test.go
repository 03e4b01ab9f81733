package taskstream_test

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// server is a `taskstream serve` process on a temp SQLite file.
type server struct {
	URL  string
	Addr string
	// Stop interrupts the server (SIGINT) and waits for it to exit; the
	// test's cleanup does it too.
	Stop func()
}

// startServer runs `node bin/taskstream.js serve --port 0` from the repository
// this module sits in, and waits for its "taskstream listening" log line.
// -short skips the tests that need it.
func startServer(t *testing.T) *server {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: no taskstream server")
	}
	return startServerOn(t, filepath.Join(t.TempDir(), "taskstream.db"), 0)
}

// startServerOn runs the server on database (a SQLite file) and port (0:
// any free one), to start one again where another ran.
func startServerOn(t *testing.T, database string, port int) *server {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("the tests run a real taskstream server and need node on PATH: %v", err)
	}
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(node, filepath.Join(root, "bin", "taskstream.js"), "serve",
		"--port", strconv.Itoa(port), "--database", database, "--shutdown-drain-ms", "0")
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
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	stop := func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(stop)
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
		return &server{URL: url, Addr: host, Stop: stop}
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
	// stalled holds every byte where it is, both ways, until unstalled;
	// flowing is closed while it is not.
	stalled bool
	flowing chan struct{}
}

func startProxy(t *testing.T, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}, flowing: make(chan struct{})}
	close(p.flowing)
	t.Cleanup(func() { ln.Close(); p.setStalled(false); p.setDown(true) })
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
	go func() { p.copy(upstream, c); upstream.Close() }()
	p.copy(c, upstream)
	c.Close()
}

// copy passes what src sends to dst, holding it while the proxy is stalled.
func (p *proxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			flowing := p.flowing
			p.mu.Unlock()
			<-flowing
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// setStalled(true) keeps every connection open but passes no more bytes
// either way, as a network dropping packets; setStalled(false) delivers what
// waited.
func (p *proxy) setStalled(stalled bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if stalled == p.stalled {
		return
	}
	p.stalled = stalled
	if stalled {
		p.flowing = make(chan struct{})
	} else {
		close(p.flowing)
	}
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
