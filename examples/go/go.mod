module github.com/katar-dev/katar/examples/go

go 1.19

require github.com/katar-dev/katar/clients/go v0.0.0

// The client from this repository; a project of its own does `go get` it instead.
replace github.com/katar-dev/katar/clients/go => ../../clients/go
