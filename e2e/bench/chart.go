package main

import (
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Row is one measured figure of one contender in one workload (medians over rounds).
type Row struct {
	Workload             string // e.g. "http small keep-alive", "http 64KiB", "http new conn", "tcp bulk", "tcp conn rate"
	Contender            string // "direct", "sluice", "haproxy", "nginx"
	Unit                 string // unit of Throughput: "req/s", "MB/s", "conn/s"
	Throughput           float64
	P50ms, P99ms, P999ms float64 // 0 when not measured
	CPUusPerReq          float64 // proxy CPU microseconds per request (or per MB / per connection); 0 for "direct"
	// Spread is (max-min)/median of Throughput over rounds; Errors is the
	// sum of failed requests. The chart ignores both; the table shows them.
	Spread float64
	Errors int64
	// KiBPerConn is the proxy's resident memory growth per open client
	// connection (the connection-count rows); 0 elsewhere.
	KiBPerConn float64
}

const chartW, chartH = 1200, 800

var (
	chartFace    = basicfont.Face7x13
	chartInk     = color.RGBA{0x22, 0x22, 0x22, 0xff}
	chartGrey    = color.RGBA{0x88, 0x88, 0x88, 0xff}
	chartLight   = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
	chartPalette = map[string]color.RGBA{
		"direct":  {0x9e, 0x9e, 0x9e, 0xff},
		"sluice":  {0x1f, 0x77, 0xb4, 0xff},
		"haproxy": {0xff, 0x7f, 0x0e, 0xff},
		"nginx":   {0x2c, 0xa0, 0x2c, 0xff},
	}
	// chartSpare colours go to contenders not in chartPalette, in order of first appearance.
	chartSpare = []color.RGBA{{0xd6, 0x27, 0x28, 0xff}, {0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff}, {0xe3, 0x77, 0xc2, 0xff}}
)

// chartBar is one drawn bar: its height is value/scale of the plot height, and text is printed above it.
type chartBar struct {
	contender string
	value     float64
	text      string
}

// chartGroup is one workload's bars; sub is a second caption line (e.g. the unit).
type chartGroup struct {
	name, sub string
	bars      []chartBar
}

// WriteChart renders a PNG bar chart (1200x800, white background) of rows to path, overwriting it.
// One bar group per workload (in order of first appearance), one bar per contender present in that
// workload, each contender in the same colour throughout, with a legend. The top panel shows
// Throughput relative to the "direct" row of the same workload (=100%), or to the workload's
// maximum when it has no direct row; the bottom panel shows CPUusPerReq of every non-direct
// contender, scaled per workload since units differ. The caller's title heads the chart. Text is
// drawn in a 7x13 ASCII font: characters it lacks are transliterated ("µ" → "u", "—" → "-") or
// shown as "?". It returns an error when rows is empty or the file cannot be written.
func WriteChart(path, title string, rows []Row) error {
	if len(rows) == 0 {
		return errors.New("chart: no rows")
	}
	var names, contenders []string
	byWorkload := map[string][]Row{}
	seen := map[string]bool{}
	for _, r := range rows {
		if byWorkload[r.Workload] == nil {
			names = append(names, r.Workload)
		}
		byWorkload[r.Workload] = append(byWorkload[r.Workload], r)
		if !seen[r.Contender] {
			seen[r.Contender] = true
			contenders = append(contenders, r.Contender)
		}
	}
	colours, spares := map[string]color.RGBA{}, 0
	for _, c := range contenders {
		if col, ok := chartPalette[c]; ok {
			colours[c] = col
		} else {
			colours[c] = chartSpare[spares%len(chartSpare)]
			spares++
		}
	}

	var thr, cpu []chartGroup
	for _, w := range names {
		ws := byWorkload[w]
		base := 0.0
		for _, r := range ws {
			base = math.Max(base, chartFinite(r.Throughput))
		}
		for _, r := range ws {
			if r.Contender == "direct" {
				base = chartFinite(r.Throughput)
				break
			}
		}
		tg := chartGroup{name: w, sub: "100% = " + chartNumber(base) + " " + ws[0].Unit}
		cg := chartGroup{name: w, sub: "us/" + strings.TrimSuffix(ws[0].Unit, "/s")}
		for _, r := range ws {
			rel := 0.0
			if base > 0 {
				rel = 100 * chartFinite(r.Throughput) / base
			}
			tg.bars = append(tg.bars, chartBar{r.Contender, rel, fmt.Sprintf("%.0f%%", rel)})
			if r.Contender != "direct" {
				v := chartFinite(r.CPUusPerReq)
				cg.bars = append(cg.bars, chartBar{r.Contender, v, chartNumber(v)})
			}
		}
		thr, cpu = append(thr, tg), append(cpu, cg)
	}

	img := image.NewRGBA(image.Rect(0, 0, chartW, chartH))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	chartText(img, chartW/2, 24, title, chartInk, true)
	lx := chartW - 20
	for i := len(contenders) - 1; i >= 0; i-- { // legend, right-aligned
		c := contenders[i]
		lx -= chartWidth(c) + 24
		chartFill(img, image.Rect(lx, 38, lx+12, 50), colours[c])
		chartText(img, lx+16, 49, c, chartInk, false)
	}
	chartPanel(img, image.Rect(70, 60, chartW-20, 420), "throughput relative to direct (=100%)", thr, colours, false)
	chartPanel(img, image.Rect(70, 450, chartW-20, 790), "proxy CPU µs per unit (bars scaled per workload)", cpu, colours, true)

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// chartPanel draws heading and groups inside r: bars grow up from a baseline 36 px above r's bottom,
// leaving room for two caption lines. Bars share one percent axis with gridlines unless perGroup,
// in which case each group's tallest bar fills the plot height and no axis is drawn.
func chartPanel(img *image.RGBA, r image.Rectangle, heading string, groups []chartGroup, colours map[string]color.RGBA, perGroup bool) {
	chartText(img, r.Min.X, r.Min.Y+12, heading, chartInk, false)
	top, base := r.Min.Y+40, r.Max.Y-36 // 20 px above the tallest bar for its value
	scale := 100.0
	for _, g := range groups {
		for _, b := range g.bars {
			scale = math.Max(scale, b.value)
		}
	}
	if !perGroup {
		scale = math.Ceil(scale/25) * 25
		for p := 0.0; p <= scale; p += 25 {
			y := base - int(p/scale*float64(base-top))
			c := chartLight
			if p == 100 {
				c = chartGrey
			}
			chartFill(img, image.Rect(r.Min.X, y, r.Max.X, y+1), c)
			label := fmt.Sprintf("%.0f%%", p)
			chartText(img, r.Min.X-8-chartWidth(label), y+5, label, chartGrey, false)
		}
	}
	chartFill(img, image.Rect(r.Min.X, base, r.Max.X, base+1), chartInk)
	gw := r.Dx() / max(1, len(groups))
	for i, g := range groups {
		gx := r.Min.X + i*gw
		s := scale
		if perGroup {
			s = 0
			for _, b := range g.bars {
				s = math.Max(s, b.value)
			}
		}
		bw := min(56, (gw-24)/max(1, len(g.bars)))
		x := gx + (gw-bw*len(g.bars))/2
		for _, b := range g.bars {
			h := 0
			if s > 0 {
				h = int(b.value / s * float64(base-top))
			}
			chartFill(img, image.Rect(x+2, base-h, x+bw-2, base), colours[b.contender])
			chartText(img, x+bw/2, base-h-4, b.text, chartInk, true)
			x += bw
		}
		chartText(img, gx+gw/2, base+16, g.name, chartInk, true)
		chartText(img, gx+gw/2, base+30, g.sub, chartGrey, true)
	}
}

// chartText draws s with its baseline at y, starting at x, or centred on x when centre is set.
func chartText(img *image.RGBA, x, y int, s string, c color.Color, centre bool) {
	s = chartASCII(s)
	if centre {
		x -= chartWidth(s) / 2
	}
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: chartFace, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// chartWidth is the drawn width of s in pixels.
func chartWidth(s string) int { return font.MeasureString(chartFace, chartASCII(s)).Ceil() }

// chartASCII replaces runes the font lacks: µ by u, dashes by -, × by x, anything else by ?.
func chartASCII(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 0x20 && r < 0x7f:
			return r
		case r == 'µ' || r == 'μ':
			return 'u'
		case r == '—' || r == '–' || r == '−':
			return '-'
		case r == '×':
			return 'x'
		}
		return '?'
	}, s)
}

// chartFill paints r in c.
func chartFill(img *image.RGBA, r image.Rectangle, c color.Color) {
	draw.Draw(img, r, image.NewUniform(c), image.Point{}, draw.Src)
}

// chartNumber formats v with about three significant digits.
func chartNumber(v float64) string {
	switch {
	case v < 10:
		return fmt.Sprintf("%.2f", v)
	case v < 100:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// chartFinite maps NaN, ±Inf and negative values to 0, so bad measurements draw as empty bars.
func chartFinite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0
	}
	return v
}
