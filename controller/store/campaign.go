package store

import (
	"context"

	"github.com/bud-ecosystem/budfleet/controller/maintenance"
)

// Campaign is a maintenance campaign as the controller keeps it: the whole
// state machine of controller/maintenance, plain data that a backend stores
// as JSON (every field round-trips through encoding/json).
type Campaign = maintenance.Campaign

// CampaignStore keeps maintenance campaigns. The runner moves a campaign on
// only through UpdateCampaign, and persists each step before it acts, so
// what is stored is the campaign's truth across a controller restart.
type CampaignStore interface {
	// CreateCampaign stores a new campaign; ErrAlreadyExists naming the id
	// when it is taken (the stored campaign is kept).
	CreateCampaign(ctx context.Context, c Campaign) error
	// GetCampaign returns the campaign with id; ErrNotFound naming the id.
	GetCampaign(ctx context.Context, id string) (Campaign, error)
	// ListCampaigns returns every campaign, oldest (CreatedAt) first, then
	// by id.
	ListCampaigns(ctx context.Context) ([]Campaign, error)
	// UpdateCampaign applies fn to the stored campaign, saves and returns
	// it. ErrNotFound naming the id (fn is not called). Like every update
	// func, fn may run more than once and must not change the
	// campaign's ID; when it returns an error, UpdateCampaign returns that
	// error and changes nothing.
	UpdateCampaign(ctx context.Context, id string, fn func(*Campaign) error) (Campaign, error)
	// DeleteCampaign removes the campaign; ErrNotFound naming the id. It
	// does not touch the commands the campaign queued.
	DeleteCampaign(ctx context.Context, id string) error
}
