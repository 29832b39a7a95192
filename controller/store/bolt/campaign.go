package bolt

import (
	"context"
	"time"

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

// campaignRecords are the stored campaigns.
var campaignRecords = records[store.Campaign]{
	bucket:  bucketCampaigns,
	noun:    "campaign",
	id:      func(v *store.Campaign) string { return v.ID },
	created: func(v *store.Campaign) time.Time { return v.CreatedAt },
}

// CreateCampaign stores a new campaign.
func (s *Store) CreateCampaign(ctx context.Context, v store.Campaign) error {
	return campaignRecords.create(s, ctx, v)
}

// GetCampaign returns the campaign with id.
func (s *Store) GetCampaign(ctx context.Context, id string) (store.Campaign, error) {
	return campaignRecords.get(s, ctx, id)
}

// ListCampaigns returns every campaign, oldest first, then by id.
func (s *Store) ListCampaigns(ctx context.Context) ([]store.Campaign, error) {
	return campaignRecords.list(s, ctx)
}

// UpdateCampaign applies fn to the stored campaign and saves it; an error
// from fn changes nothing.
func (s *Store) UpdateCampaign(ctx context.Context, id string, fn func(*store.Campaign) error) (store.Campaign, error) {
	return campaignRecords.update(s, ctx, id, fn)
}

// DeleteCampaign removes a campaign.
func (s *Store) DeleteCampaign(ctx context.Context, id string) error {
	return campaignRecords.delete(s, ctx, id)
}
