package etcd

import (
	"encoding/json"
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/bud-ecosystem/budfleet/controller/store"
	hostv1 "github.com/bud-ecosystem/budfleet/proto/budfleet/host/v1"
)

// nodeRecord is how a node is kept: plain JSON by store.Node's tags, with
// the inventory under the generated message's own JSON tags (its proto
// field names, numbers as numbers), which are exactly the names and types
// the hand-written inventory of schema versions 1 and 2 used, so those
// records read unchanged. (store.Node's own Inventory field is tagged "-"
// and shadowed by this one.)
//
// encoding/json rather than protojson: every node update (heartbeats
// aside, each report an agent sends) re-encodes the record, and protojson's
// reflection cost about 5 KiB of controller RSS per connected agent in the
// connect storm of the memory benchmark (1,500 agents). The inventory is a
// flat message of scalars and lists, which encoding/json handles exactly.
type nodeRecord struct {
	store.Node
	Inventory json.RawMessage `json:"inventory,omitempty"`
}

// encodeNode writes n with its inventory as protobuf JSON.
func encodeNode(n store.Node) ([]byte, error) {
	r := nodeRecord{Node: n}
	if n.Inventory != nil {
		b, err := json.Marshal(n.Inventory)
		if err != nil {
			return nil, fmt.Errorf("node %s inventory: %w", n.ID, err)
		}
		r.Inventory = b
	}
	return json.Marshal(r)
}

// decodeNode reads what encodeNode wrote, and the records of earlier
// versions. The node shares no memory with raw.
func decodeNode(raw []byte) (store.Node, error) {
	var r nodeRecord
	if err := json.Unmarshal(raw, &r); err != nil {
		return store.Node{}, err
	}
	n := r.Node
	n.Inventory = nil
	if len(r.Inventory) == 0 || string(r.Inventory) == "null" {
		return n, nil
	}
	inv := &hostv1.Inventory{}
	if err := json.Unmarshal(r.Inventory, inv); err != nil {
		// Development builds wrote the inventory as protojson for a while,
		// with 64-bit numbers as strings.
		inv = &hostv1.Inventory{}
		if perr := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(r.Inventory, inv); perr != nil {
			return store.Node{}, fmt.Errorf("node %s inventory: %w", n.ID, err)
		}
	}
	n.Inventory = inv
	return n, nil
}
