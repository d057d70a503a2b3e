package charts

import "embed"

// Meridian is the chart's directory tree, rooted at "meridian".
//
//go:embed all:meridian
var Meridian embed.FS

// MeridianDir is the chart's directory inside Meridian.
const MeridianDir = "meridian"
