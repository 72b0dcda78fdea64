package config

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// Limits on the configuration file. The HCL parser and evaluator recurse
// once per level of nesting and can exhaust the goroutine stack, which is
// fatal, and parse number literals in time quadratic in their length, so
// Parse refuses a file beyond these limits before parsing it. No sensible
// configuration comes near them.
const (
	// MaxFileSize is the largest configuration file in bytes: 4 MiB.
	MaxFileSize = 4 << 20
	// MaxNesting is the deepest nesting allowed: each open block, object,
	// tuple, parenthesis, template interpolation or directive, and
	// template if or for counts one level, and so does each operator in an
	// expression (until the next comma, or the next newline outside
	// brackets), because operators nest too ("!!!x", "a ? b : c ? d : e",
	// "1 + 1 + 1"), as does an index after an index ("x[a][b]").
	MaxNesting = 100
	// MaxNumberLength is the most characters a number literal may have.
	MaxNumberLength = 1000
)

// checkSize reports a file of size bytes over MaxFileSize.
func checkSize(filename string, size int) hcl.Diagnostics {
	if size <= MaxFileSize {
		return nil
	}
	return hcl.Diagnostics{{
		Severity: hcl.DiagError,
		Summary:  "Configuration file too large",
		Detail:   fmt.Sprintf("the file has more than %d bytes (4 MiB), the most allowed", MaxFileSize),
		Context:  &hcl.Range{Filename: filename},
	}}
}

// nestLevel is one open level of nesting in prescan.
type nestLevel struct {
	open hclsyntax.TokenType // the opening token; TokenNil for a template if or for
	ops  int                 // operators since the last separator at this level
	// directive is +1 when this template control opened an if or for, -1
	// when it closed one.
	directive int
}

// prescan checks src against MaxFileSize, MaxNesting and MaxNumberLength
// without parsing it. It works on hclsyntax's lexer, which is iterative, so
// strings, comments and heredocs are told apart exactly as the parser will.
// It reports the first nesting violation at the token that crosses the
// limit and every overlong number; a lexical error is left for the parser
// to report.
func prescan(filename string, src []byte) hcl.Diagnostics {
	if diags := checkSize(filename, len(src)); diags != nil {
		return diags
	}
	tokens, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	var diags hcl.Diagnostics
	stack := []nestLevel{{open: hclsyntax.TokenOBrace}} // the file body
	depth := 0                                          // open levels (the file body excluded) plus operators
	reported := false
	push := func(open hclsyntax.TokenType) {
		stack = append(stack, nestLevel{open: open})
		depth++
	}
	pop := func() {
		if len(stack) > 1 {
			depth -= 1 + stack[len(stack)-1].ops
			stack = stack[:len(stack)-1]
		}
	}
	operator := func() {
		stack[len(stack)-1].ops++
		depth++
	}
	separator := func() {
		depth -= stack[len(stack)-1].ops
		stack[len(stack)-1].ops = 0
	}
	prev := hclsyntax.TokenNil
	for _, tok := range tokens {
		switch tok.Type {
		case hclsyntax.TokenOBrack:
			switch prev {
			case hclsyntax.TokenIdent, hclsyntax.TokenNumberLit, hclsyntax.TokenCQuote, hclsyntax.TokenCHeredoc,
				hclsyntax.TokenCBrack, hclsyntax.TokenCParen, hclsyntax.TokenCBrace:
				operator() // an index nests its collection
			}
			push(tok.Type)
		case hclsyntax.TokenOBrace, hclsyntax.TokenOParen, hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			push(tok.Type)
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen, hclsyntax.TokenTemplateSeqEnd:
			top := stack[len(stack)-1]
			pop()
			if top.open == hclsyntax.TokenTemplateControl {
				switch {
				case top.directive > 0:
					push(hclsyntax.TokenNil)
				case top.directive < 0 && len(stack) > 1 && stack[len(stack)-1].open == hclsyntax.TokenNil:
					pop()
				}
			}
		case hclsyntax.TokenIdent:
			if prev == hclsyntax.TokenTemplateControl {
				switch string(tok.Bytes) {
				case "if", "for":
					stack[len(stack)-1].directive = 1
				case "endif", "endfor":
					stack[len(stack)-1].directive = -1
				}
			}
		case hclsyntax.TokenPlus, hclsyntax.TokenMinus, hclsyntax.TokenStar, hclsyntax.TokenSlash, hclsyntax.TokenPercent,
			hclsyntax.TokenEqualOp, hclsyntax.TokenNotEqual, hclsyntax.TokenLessThan, hclsyntax.TokenLessThanEq,
			hclsyntax.TokenGreaterThan, hclsyntax.TokenGreaterThanEq, hclsyntax.TokenAnd, hclsyntax.TokenOr,
			hclsyntax.TokenBang, hclsyntax.TokenQuestion:
			operator()
		case hclsyntax.TokenComma:
			separator()
		case hclsyntax.TokenNewline, hclsyntax.TokenComment:
			// Newlines, including the one that ends a line comment, end
			// an attribute or object item, but are ignored inside
			// parentheses, brackets and interpolations.
			end := len(tok.Bytes) > 0 && tok.Bytes[len(tok.Bytes)-1] == '\n'
			if end && stack[len(stack)-1].open == hclsyntax.TokenOBrace {
				separator()
			}
		case hclsyntax.TokenNumberLit:
			if len(tok.Bytes) > MaxNumberLength {
				diags = append(diags, &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Number too long",
					Detail:   fmt.Sprintf("a number may have at most %d characters; this one has %d", MaxNumberLength, len(tok.Bytes)),
					Subject:  tok.Range.Ptr(),
				})
			}
		}
		if tok.Type != hclsyntax.TokenComment {
			prev = tok.Type
		}
		if depth > MaxNesting && !reported {
			reported = true
			diags = append(diags, &hcl.Diagnostic{
				Severity: hcl.DiagError,
				Summary:  "Nesting too deep",
				Detail: fmt.Sprintf("blocks, brackets, templates and operators nest more than %d levels deep here",
					MaxNesting),
				Subject: tok.Range.Ptr(),
			})
		}
	}
	return diags
}
