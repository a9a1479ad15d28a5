package katar

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
)

// The README's example builds against this module, as a program of its own would.
func TestTheReadmeExampleBuilds(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go command")
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	block := regexp.MustCompile("(?s)## Example\n\n```go\n(.*?)```").FindSubmatch(readme)
	if block == nil {
		t.Fatal("README.md has no Go example under ## Example")
	}
	here, _ := filepath.Abs(".")
	dir := t.TempDir()
	module := "module readme\n\ngo 1.19\n\nrequire github.com/katar-dev/katar/clients/go v0.0.0\n\n" +
		"replace github.com/katar-dev/katar/clients/go => " + here + "\n"
	os.WriteFile(filepath.Join(dir, "go.mod"), []byte(module), 0o600)
	os.WriteFile(filepath.Join(dir, "main.go"), block[1], 0o600)
	build := exec.Command("go", "vet", ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "GOFLAGS=-mod=mod")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("the README's example does not build: %v\n%s", err, out)
	}
}
