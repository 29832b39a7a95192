package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// The plain records (clusters, campaigns, machines) share one shape: a
// JSON value under a kind's prefix, keyed by id.

func create[T any](ctx context.Context, s *Store, kind, what, id string, v T) error {
	key := s.p + kind + "/" + id
	return s.update(ctx, func(t *tx) error {
		if ok, err := t.exists(key); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("%s %s: %w", what, id, store.ErrAlreadyExists)
		}
		return t.putJSON(key, v)
	})
}

func getRec[T any](ctx context.Context, s *Store, kind, what, id string) (T, error) {
	var v T
	err := getJSON(ctx, s, s.p+kind+"/"+id, &v)
	if errors.Is(err, store.ErrNotFound) {
		var zero T
		return zero, fmt.Errorf("%s %s: %w", what, id, store.ErrNotFound)
	}
	return v, err
}

func listRec[T any](ctx context.Context, s *Store, kind, what string) ([]T, error) {
	var out []T
	err := s.list(ctx, s.p+kind+"/", func(k string, raw []byte) error {
		var v T
		if err := json.Unmarshal(raw, &v); err != nil {
			return fmt.Errorf("%s %s: %w", what, k, err)
		}
		out = append(out, v)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func updateRec[T any](ctx context.Context, s *Store, kind, what, id string, fn func(*T) error, idOf func(*T) string) (T, error) {
	key := s.p + kind + "/" + id
	var v T
	err := s.update(ctx, func(t *tx) error {
		var cur T
		if err := t.getJSON(key, &cur); err != nil {
			return fmt.Errorf("%s %s: %w", what, id, err)
		}
		if err := fn(&cur); err != nil {
			return err
		}
		if got := idOf(&cur); got != id {
			return fmt.Errorf("%s %s: the update changed its id to %q", what, id, got)
		}
		v = cur
		return t.putJSON(key, cur)
	})
	if err != nil {
		var zero T
		return zero, err
	}
	return v, nil
}

func deleteRec(ctx context.Context, s *Store, kind, what, id string) error {
	key := s.p + kind + "/" + id
	return s.update(ctx, func(t *tx) error {
		if ok, err := t.exists(key); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("%s %s: %w", what, id, store.ErrNotFound)
		}
		t.del(key)
		return nil
	})
}

func byCreated[T any](out []T, at func(T) time.Time, id func(T) string) {
	sort.Slice(out, func(i, j int) bool {
		if !at(out[i]).Equal(at(out[j])) {
			return at(out[i]).Before(at(out[j]))
		}
		return id(out[i]) < id(out[j])
	})
}

// Clusters.

// AddCluster stores a new cluster.
func (s *Store) AddCluster(ctx context.Context, c store.Cluster) error {
	return create(ctx, s, "clusters", "cluster", c.Name, c)
}

// GetCluster returns the cluster with name.
func (s *Store) GetCluster(ctx context.Context, name string) (store.Cluster, error) {
	return getRec[store.Cluster](ctx, s, "clusters", "cluster", name)
}

// ListClusters returns every cluster by name.
func (s *Store) ListClusters(ctx context.Context) ([]store.Cluster, error) {
	return listRec[store.Cluster](ctx, s, "clusters", "cluster")
}

// DeleteCluster removes the cluster.
func (s *Store) DeleteCluster(ctx context.Context, name string) error {
	return deleteRec(ctx, s, "clusters", "cluster", name)
}

// Campaigns.

// CreateCampaign stores a new campaign.
func (s *Store) CreateCampaign(ctx context.Context, c store.Campaign) error {
	return create(ctx, s, "campaigns", "campaign", c.ID, c)
}

// GetCampaign returns the campaign with id.
func (s *Store) GetCampaign(ctx context.Context, id string) (store.Campaign, error) {
	return getRec[store.Campaign](ctx, s, "campaigns", "campaign", id)
}

// ListCampaigns returns every campaign, oldest first.
func (s *Store) ListCampaigns(ctx context.Context) ([]store.Campaign, error) {
	out, err := listRec[store.Campaign](ctx, s, "campaigns", "campaign")
	byCreated(out, func(c store.Campaign) time.Time { return c.CreatedAt }, func(c store.Campaign) string { return c.ID })
	return out, err
}

// UpdateCampaign applies fn to the stored campaign, compare-and-swap on its
// revision: two controllers cannot both move the same campaign on.
func (s *Store) UpdateCampaign(ctx context.Context, id string, fn func(*store.Campaign) error) (store.Campaign, error) {
	return updateRec(ctx, s, "campaigns", "campaign", id, fn, func(c *store.Campaign) string { return c.ID })
}

// DeleteCampaign removes the campaign.
func (s *Store) DeleteCampaign(ctx context.Context, id string) error {
	return deleteRec(ctx, s, "campaigns", "campaign", id)
}

// Machines.

// CreateMachine stores a new machine.
func (s *Store) CreateMachine(ctx context.Context, m store.Machine) error {
	return create(ctx, s, "machines", "machine", m.ID, m)
}

// GetMachine returns the machine with id.
func (s *Store) GetMachine(ctx context.Context, id string) (store.Machine, error) {
	return getRec[store.Machine](ctx, s, "machines", "machine", id)
}

// ListMachines returns every machine, oldest first.
func (s *Store) ListMachines(ctx context.Context) ([]store.Machine, error) {
	out, err := listRec[store.Machine](ctx, s, "machines", "machine")
	byCreated(out, func(m store.Machine) time.Time { return m.CreatedAt }, func(m store.Machine) string { return m.ID })
	return out, err
}

// UpdateMachine applies fn to the stored machine.
func (s *Store) UpdateMachine(ctx context.Context, id string, fn func(*store.Machine) error) (store.Machine, error) {
	return updateRec(ctx, s, "machines", "machine", id, fn, func(m *store.Machine) string { return m.ID })
}

// DeleteMachine removes the machine.
func (s *Store) DeleteMachine(ctx context.Context, id string) error {
	return deleteRec(ctx, s, "machines", "machine", id)
}

// Artifacts.

func (s *Store) artifactKey(digest string) string { return s.p + "artifacts/" + digest }
func (s *Store) artifactNameKey(name, version, platform string) string {
	return s.p + "artifact_names/" + name + "\x00" + version + "\x00" + platform
}

// PutArtifact stores a, idempotently for the same digest and name.
func (s *Store) PutArtifact(ctx context.Context, a store.Artifact) (store.Artifact, bool, error) {
	var stored store.Artifact
	created := false
	err := s.update(ctx, func(t *tx) error {
		stored, created = store.Artifact{}, false
		if err := t.getJSON(s.artifactKey(a.Digest), &stored); err == nil {
			if stored.Name == a.Name && stored.Version == a.Version && stored.Platform == a.Platform {
				return nil
			}
			return fmt.Errorf("artifact %s@%s (%s): its content, %s, is already stored as %s@%s (%s): %w", a.Name, a.Version, a.Platform, a.Digest, stored.Name, stored.Version, stored.Platform, store.ErrAlreadyExists)
		} else if !errors.Is(err, store.ErrNotFound) {
			return err
		}
		nk := s.artifactNameKey(a.Name, a.Version, a.Platform)
		if d, ok, err := t.get(nk); err != nil {
			return err
		} else if ok {
			return fmt.Errorf("artifact %s@%s (%s) is already bound to other content, %s: %w", a.Name, a.Version, a.Platform, d, store.ErrAlreadyExists)
		}
		stored, created = a, true
		t.put(nk, []byte(a.Digest))
		return t.putJSON(s.artifactKey(a.Digest), a)
	})
	if err != nil {
		return store.Artifact{}, false, err
	}
	return stored, created, nil
}

// GetArtifact returns the artifact with digest.
func (s *Store) GetArtifact(ctx context.Context, digest string) (store.Artifact, error) {
	return getRec[store.Artifact](ctx, s, "artifacts", "artifact", digest)
}

// FindArtifacts returns the artifacts named name at version, by platform.
func (s *Store) FindArtifacts(ctx context.Context, name, version string) ([]store.Artifact, error) {
	return s.listArtifacts(ctx, name+"\x00"+version+"\x00")
}

// ListArtifacts returns every artifact by name, version, platform.
func (s *Store) ListArtifacts(ctx context.Context) ([]store.Artifact, error) {
	return s.listArtifacts(ctx, "")
}

func (s *Store) listArtifacts(ctx context.Context, prefix string) ([]store.Artifact, error) {
	var digests []string
	if err := s.list(ctx, s.p+"artifact_names/"+prefix, func(_ string, v []byte) error {
		digests = append(digests, string(v))
		return nil
	}); err != nil {
		return nil, err
	}
	var out []store.Artifact
	for _, d := range digests {
		a, err := s.GetArtifact(ctx, d)
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted between the two reads
		}
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// DeleteArtifact removes the artifact with digest and frees its name.
func (s *Store) DeleteArtifact(ctx context.Context, digest string) error {
	return s.update(ctx, func(t *tx) error {
		var a store.Artifact
		if err := t.getJSON(s.artifactKey(digest), &a); err != nil {
			return fmt.Errorf("artifact %s: %w", digest, err)
		}
		t.del(s.artifactNameKey(a.Name, a.Version, a.Platform))
		t.del(s.artifactKey(digest))
		return nil
	})
}

// Operators.

// PutOperator stores o under its name unless a live (not revoked)
// operator has it.
func (s *Store) PutOperator(ctx context.Context, o store.Operator) error {
	key := s.p + "operators/" + o.Name
	return s.update(ctx, func(t *tx) error {
		var old store.Operator
		if err := t.getJSON(key, &old); err == nil && !old.Revoked {
			return fmt.Errorf("operator %s: %w", o.Name, store.ErrAlreadyExists)
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		return t.putJSON(key, o)
	})
}

// GetOperator returns the operator named name. It is a serializable read,
// answered by the member the client talks to without a round of the
// quorum: the controller checks the caller's record on every operator
// call, and that check must not make every call wait out the request
// timeout while etcd has no quorum (the call itself then says etcd is
// unavailable). A revocation is seen as soon as the member has it.
func (s *Store) GetOperator(ctx context.Context, name string) (store.Operator, error) {
	if err := ctx.Err(); err != nil {
		return store.Operator{}, fmt.Errorf("controller store: %w", err)
	}
	rctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Get(rctx, s.p+"operators/"+name, clientv3.WithSerializable())
	if err != nil {
		return store.Operator{}, s.wrapErr(ctx, err)
	}
	if len(resp.Kvs) == 0 {
		return store.Operator{}, fmt.Errorf("operator %s: %w", name, store.ErrNotFound)
	}
	var o store.Operator
	if err := json.Unmarshal(resp.Kvs[0].Value, &o); err != nil {
		return store.Operator{}, fmt.Errorf("operator %s: %w", name, err)
	}
	return o, nil
}

// ListOperators returns every operator by name (the keys' order).
func (s *Store) ListOperators(ctx context.Context) ([]store.Operator, error) {
	return listRec[store.Operator](ctx, s, "operators", "operator")
}

// UpdateOperator applies fn to the stored operator, compare-and-swap on
// its revision: a revocation on one controller is never lost to a renewal
// on another.
func (s *Store) UpdateOperator(ctx context.Context, name string, fn func(*store.Operator) error) (store.Operator, error) {
	return updateRec(ctx, s, "operators", "operator", name, func(o *store.Operator) error {
		if err := fn(o); err != nil {
			return err
		}
		o.Name = name // as in bolt: the name is the key
		return nil
	}, func(o *store.Operator) string { return o.Name })
}
