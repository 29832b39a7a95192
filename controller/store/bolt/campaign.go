package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	bbolt "go.etcd.io/bbolt"

	"github.com/bud-ecosystem/budfleet/controller/store"
)

// bucketCampaigns holds maintenance campaigns: <campaign id> -> JSON
// store.Campaign (since schema version 4).
var bucketCampaigns = []byte("campaigns")

// migrateCampaigns is the migration 3 -> 4: the campaigns bucket.
func migrateCampaigns(tx *bbolt.Tx) error {
	_, err := tx.CreateBucketIfNotExists(bucketCampaigns)
	return err
}

// CreateCampaign stores a new campaign.
func (s *Store) CreateCampaign(ctx context.Context, c store.Campaign) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketCampaigns)
		if b.Get([]byte(c.ID)) != nil {
			return fmt.Errorf("campaign %s: %w", c.ID, store.ErrAlreadyExists)
		}
		return putJSON(b, []byte(c.ID), c)
	})
}

// GetCampaign returns the campaign with id.
func (s *Store) GetCampaign(ctx context.Context, id string) (store.Campaign, error) {
	var c store.Campaign
	err := s.view(ctx, func(tx *bbolt.Tx) error { return getJSON(tx.Bucket(bucketCampaigns), []byte(id), &c) })
	if errors.Is(err, store.ErrNotFound) {
		return store.Campaign{}, fmt.Errorf("campaign %s: %w", id, store.ErrNotFound)
	}
	return c, err
}

// ListCampaigns returns every campaign, oldest first, then by id.
func (s *Store) ListCampaigns(ctx context.Context) ([]store.Campaign, error) {
	var out []store.Campaign
	err := s.view(ctx, func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketCampaigns).ForEach(func(k, v []byte) error {
			var c store.Campaign
			if err := json.Unmarshal(v, &c); err != nil {
				return fmt.Errorf("campaign %s: %w", k, err)
			}
			out = append(out, c)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// UpdateCampaign applies fn to the stored campaign and saves it; an error
// from fn changes nothing.
func (s *Store) UpdateCampaign(ctx context.Context, id string, fn func(*store.Campaign) error) (store.Campaign, error) {
	var c store.Campaign
	err := s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketCampaigns)
		if err := getJSON(b, []byte(id), &c); err != nil {
			return fmt.Errorf("campaign %s: %w", id, err)
		}
		if err := fn(&c); err != nil {
			return err
		}
		if c.ID != id {
			return fmt.Errorf("campaign %s: the update changed its id to %q", id, c.ID)
		}
		return putJSON(b, []byte(id), c)
	})
	if err != nil {
		return store.Campaign{}, err
	}
	return c, nil
}

// DeleteCampaign removes a campaign.
func (s *Store) DeleteCampaign(ctx context.Context, id string) error {
	return s.update(ctx, func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketCampaigns)
		if b.Get([]byte(id)) == nil {
			return fmt.Errorf("campaign %s: %w", id, store.ErrNotFound)
		}
		return b.Delete([]byte(id))
	})
}
