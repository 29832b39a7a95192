// bud-provider-test serves internal/providertest: a provider plugin for the
// tests of hosts, which misbehaves on request.
package main

import (
	"github.com/bud-ecosystem/budfleet/internal/providertest"
	"github.com/bud-ecosystem/budfleet/plugins/sdk"
)

func main() { sdk.Serve(providertest.New()) }
