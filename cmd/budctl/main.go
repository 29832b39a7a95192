// budctl is the operator CLI of budfleet.
package main

import (
	"github.com/bud-ecosystem/budfleet/internal/cli"
)

func main() { cli.Main(newRoot()) }
