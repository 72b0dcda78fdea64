package config

import (
	"strings"

	"github.com/hashicorp/hcl/v2"
)

// defaultConnectService is the identity sluice presents in the mesh
// without a connect block.
const defaultConnectService = "sluice"

var connectSchema = &hcl.BodySchema{Attributes: attrs("service")}

// connect decodes the connect block, if any.
func (d *decoder) connect(b *hcl.Block) *Connect {
	if b == nil {
		return nil
	}
	c := &Connect{Service: defaultConnectService}
	as := d.content(b.Body, connectSchema).Attributes
	d.str(as, "service", &c.Service, meshName)
	return c
}

// meshName accepts a Consul service name as the mesh's identities use it:
// letters, digits, '_', '-' and '.'.
func meshName(s string) string {
	if s == "" || strings.IndexFunc(s, func(r rune) bool { return !metaKeyRune(r) && r != '.' }) >= 0 {
		return "must be a service name of letters, digits, '_', '-' and '.'"
	}
	return ""
}

// serviceConnect decodes a service's connect attribute; with connect =
// true, a tls or failover block is an error at the attribute.
func (d *decoder) serviceConnect(as hcl.Attributes, blocks hcl.Blocks, s *Service) {
	a := as["connect"]
	if a == nil || !d.boolean(as, "connect", &s.Connect) || !s.Connect {
		return
	}
	for _, typ := range []string{"tls", "failover"} {
		if of := blocks.OfType(typ); len(of) > 0 {
			d.errorf(a.Expr.Range(), "Conflicting connect",
				"connect = true cannot be used with a %s block (at %s): %s", typ, pos(of[0].DefRange), connectConflict[typ])
		}
	}
}

var connectConflict = map[string]string{
	"tls":      "Connect brings its own mutual TLS with the mesh's certificates",
	"failover": "Connect instances are dialled in the local datacenter only",
}
