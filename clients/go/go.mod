module github.com/katar-dev/katar/clients/go

go 1.19
