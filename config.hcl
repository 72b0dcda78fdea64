# The configuration `make demo` runs: one HTTP listener in front of the
# Consul service "web", whose three demo instances carry meta weights 1, 1, 3.
# Every field is described in README.md under "Configuration reference".

consul {
  address = "127.0.0.1:8500"
  stale   = true
}

admin {
  address = "127.0.0.1:9901"
}

listener "public" {
  address  = "127.0.0.1:8080"
  protocol = "http"

  route "/" {
    service = "web"
  }
}

service "web" {
  strategy   = "weighted_round_robin"
  weight_key = "weight"

  retry {
    attempts = 2
  }
}
