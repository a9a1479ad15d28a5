package katar

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests run against a real `katar serve`: $KATAR_BIN, else the repository's
// .venv/bin/katar; on SQLite, and on PostgreSQL too when KATAR_TEST_POSTGRES_URL is set.

func katarBin(t *testing.T) string {
	bin := os.Getenv("KATAR_BIN")
	if bin == "" {
		bin, _ = filepath.Abs(filepath.Join("..", "..", ".venv", "bin", "katar"))
	}
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("no katar at %s: set KATAR_BIN", bin)
	}
	return bin
}

func stores() []string {
	if os.Getenv("KATAR_TEST_POSTGRES_URL") != "" {
		return []string{"sqlite", "postgres"}
	}
	return []string{"sqlite"}
}

type server struct {
	t      *testing.T
	dir    string
	db     string
	schema string
	config string
	port   int
	cmd    *exec.Cmd
	done   chan struct{}
	mu     sync.Mutex
	output bytes.Buffer
}

var serving = regexp.MustCompile(`serving on https?://127\.0\.0\.1:(\d+)`)

func newServer(t *testing.T, store, config string) *server {
	s := &server{t: t, dir: t.TempDir(), db: "sqlite:///k.db", config: config}
	if store == "postgres" {
		b := make([]byte, 6)
		rand.Read(b)
		s.schema = "katar_go_" + hex.EncodeToString(b)
		base := os.Getenv("KATAR_TEST_POSTGRES_URL")
		sep := "?"
		if strings.Contains(base, "?") {
			sep = "&"
		}
		s.db = base + sep + "schema=" + s.schema + "&pool_size=4"
	}
	t.Cleanup(s.close)
	s.start()
	return s
}

func (s *server) url() string { return fmt.Sprintf("http://127.0.0.1:%d", s.port) }

// start starts it (on the port it had, after a kill) and waits until it serves.
func (s *server) start() {
	args := []string{"serve", "--port", fmt.Sprint(s.port), "--db", s.db}
	if s.config != "" {
		if err := os.WriteFile(filepath.Join(s.dir, "katar.toml"), []byte(s.config), 0o600); err != nil {
			s.t.Fatal(err)
		}
		args = append(args, "--config", "katar.toml")
	}
	cmd := exec.Command(katarBin(s.t), args...)
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "PYTHONUNBUFFERED=1")
	dieWithTheTests(cmd)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		s.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.cmd = cmd
	s.done = make(chan struct{})
	ready := make(chan int, 1)
	go func() {
		scanner := bufio.NewScanner(stderr)
		for scanner.Scan() {
			line := scanner.Text()
			s.mu.Lock()
			s.output.WriteString(line + "\n")
			s.mu.Unlock()
			if m := serving.FindStringSubmatch(line); m != nil {
				var port int
				fmt.Sscan(m[1], &port)
				select {
				case ready <- port:
				default:
				}
			}
		}
		cmd.Wait()
		close(s.done)
	}()
	select {
	case port := <-ready:
		s.port = port
	case <-s.done:
		s.t.Fatalf("katar serve exited:\n%s", s.logs())
	case <-time.After(30 * time.Second):
		s.kill()
		s.t.Fatalf("katar serve did not start:\n%s", s.logs())
	}
}

func (s *server) logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.output.String()
}

// kill: kill -9 by its PID, and wait for it to end.
func (s *server) kill() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func (s *server) close() {
	s.kill()
	if s.schema != "" {
		python := filepath.Join(filepath.Dir(katarBin(s.t)), "python")
		script := "import psycopg, sys\nwith psycopg.connect(sys.argv[1], autocommit=True) as c: c.execute('DROP SCHEMA IF EXISTS " + s.schema + " CASCADE')"
		exec.Command(python, "-c", script, os.Getenv("KATAR_TEST_POSTGRES_URL")).Run() // a leftover schema is harmless
	}
}

// call: an HTTP call for what the client does not do (queues).
func (s *server) call(method, path string, body any) {
	s.t.Helper()
	encoded, _ := json.Marshal(body)
	request, _ := http.NewRequest(method, s.url()+path, bytes.NewReader(encoded))
	request.Header.Set("Content-Type", "application/json")
	response, err := http.DefaultClient.Do(request)
	if err != nil {
		s.t.Fatal(err)
	}
	defer response.Body.Close()
	if response.StatusCode >= 300 {
		s.t.Fatalf("%s %s: %d", method, path, response.StatusCode)
	}
}

func (s *server) queue(name string, options map[string]any) {
	body := map[string]any{"persistent": true}
	for k, v := range options {
		body[k] = v
	}
	s.call("PUT", "/v1/queue/"+name, body)
}

// newToken: a token and the katar.toml lines that declare it.
func newToken(role string, queues ...string) (string, string) {
	b := make([]byte, 24)
	rand.Read(b)
	secret := "katar_" + hex.EncodeToString(b)
	sum := sha256.Sum256([]byte(secret))
	names, _ := json.Marshal(queues)
	return secret, fmt.Sprintf("[[tokens]]\ntoken_sha256 = %q\nrole = %q\nqueues = %s\n", hex.EncodeToString(sum[:]), role, names)
}

// until waits for check to be true, failing the test after the timeout.
func until(t *testing.T, timeout time.Duration, what string, check func() bool) {
	t.Helper()
	end := time.Now().Add(timeout)
	for !check() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// lines: a logger whose lines a test reads.
type lines struct {
	mu   sync.Mutex
	text []string
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.text = append(l.text, strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (l *lines) count(part string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range l.text {
		if strings.Contains(line, part) {
			n++
		}
	}
	return n
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string{}, l.text...)
}

var background = context.Background()
