module github.com/sluice-lb/sluice/e2e/bench

go 1.26.0

require golang.org/x/image v0.48.0
