// bud-provider-baremetal is the bare-metal provider plugin: the hosts of
// an Ansible inventory, enrolled over SSH, powered through their BMCs over
// IPMI. The controller starts it (bud-controller serve --providers FILE);
// run by hand it only says so.
package main

import (
	"github.com/bud-ecosystem/budfleet/plugins/baremetal"
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

func main() { sdk.Serve(baremetal.New(baremetal.Options{Log: sdk.Logger()})) }
