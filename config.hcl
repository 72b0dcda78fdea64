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

  # sluice's own probe, beside the Consul check the demo registers.
  health_check {
    type     = "http"
    path     = "/health"
    interval = "1s"
    timeout  = "500ms"
    rise     = 2
    fall     = 2
  }

  passive {
    consecutive_failures = 3
    ejection_time        = "10s"
  }

  retry {
    attempts = 3
  }
}
