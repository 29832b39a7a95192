package forward

import (
	"fmt"
	"strings"

	"github.com/bud-ecosystem/budfleet/siem"
	"github.com/bud-ecosystem/budfleet/siem/output"
	"github.com/bud-ecosystem/budfleet/siem/output/hec"
	"github.com/bud-ecosystem/budfleet/siem/output/relp"
	"github.com/bud-ecosystem/budfleet/siem/output/syslog"
)

// dialOutput builds the client for one configured output. Connections are
// made lazily by the first Send, so a SIEM that is down only delays.
func dialOutput(o siem.OutputConfig, hostname, appName string) (output.Output, error) {
	tc := output.TLSConfig{CAFile: o.TLS.CAFile, CertFile: o.TLS.CertFile, KeyFile: o.TLS.KeyFile, ServerName: o.TLS.ServerName}
	if tc.ServerName == "" && o.Type != siem.OutputSplunkHEC {
		if i := strings.LastIndexByte(o.Address, ':'); i > 0 {
			tc.ServerName = strings.Trim(o.Address[:i], "[]")
		}
	}
	tlsCfg, err := tc.Load()
	if err != nil {
		return nil, err
	}
	format := syslog.Formatter{Hostname: hostname, AppName: appName}
	switch o.Type {
	case siem.OutputSyslog:
		return syslog.New(syslog.Config{Addr: o.Address, TLS: tlsCfg, Format: format, ConfirmEachBatch: o.ConfirmEachBatch})
	case siem.OutputRELP:
		return relp.New(relp.Config{Addr: o.Address, TLS: tlsCfg, Format: format, Window: o.Window})
	case siem.OutputSplunkHEC:
		return hec.New(hec.Config{URL: o.Address, TokenFile: o.TokenFile, Index: o.Index, Host: hostname, TLS: tlsCfg, Ack: o.Ack})
	}
	return nil, fmt.Errorf("unknown output type %q", o.Type)
}
