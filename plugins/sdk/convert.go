package sdk

import (
	providerv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/provider/v1"
)

// The proto <-> struct conversions both adapters use; generated types stay
// on the wire side of this package.

var powerStates = map[PowerState]providerv1.PowerState{
	PowerUnknown: providerv1.PowerState_POWER_STATE_UNSPECIFIED,
	PowerOn:      providerv1.PowerState_POWER_STATE_ON,
	PowerOff:     providerv1.PowerState_POWER_STATE_OFF,
	PowerOther:   providerv1.PowerState_POWER_STATE_OTHER,
}

var powerActions = map[PowerAction]providerv1.PowerAction{
	PowerActionOn:    providerv1.PowerAction_POWER_ACTION_ON,
	PowerActionOff:   providerv1.PowerAction_POWER_ACTION_OFF,
	PowerActionReset: providerv1.PowerAction_POWER_ACTION_RESET,
	PowerActionPXE:   providerv1.PowerAction_POWER_ACTION_PXE,
}

func toProtoMachine(m Machine) *providerv1.Machine {
	return &providerv1.Machine{
		ProviderId: m.ProviderID,
		Name:       m.Name,
		Addresses:  m.Addresses,
		PowerState: powerStates[m.Power],
		Labels:     m.Labels,
	}
}

func fromProtoMachine(m *providerv1.Machine) Machine {
	out := Machine{
		ProviderID: m.GetProviderId(),
		Name:       m.GetName(),
		Addresses:  m.GetAddresses(),
		Labels:     m.GetLabels(),
	}
	for s, p := range powerStates {
		if p == m.GetPowerState() {
			out.Power = s
		}
	}
	return out
}

func fromProtoAction(a providerv1.PowerAction) (PowerAction, bool) {
	for s, p := range powerActions {
		if p == a {
			return s, true
		}
	}
	return "", false
}
