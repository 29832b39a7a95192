// bud-provider-vsphere is the vSphere provider plugin. The controller
// starts it (bud-controller serve --providers FILE); run by hand it says so
// and exits.
package main

import (
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
	"github.com/bud-ecosystem/budfleet/plugins/vsphere"
)

func main() { sdk.Serve(vsphere.New()) }
