module github.com/katar-dev/katar/tests/acceptance/trace_workers

go 1.19

require github.com/katar-dev/katar/clients/go v0.0.0

replace github.com/katar-dev/katar/clients/go => ../../../clients/go
