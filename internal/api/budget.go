package api

import (
	"context"
	"net/url"
)

// Usage and budgets (package billing has their shapes): scope is "app" or
// "org", name the app or organisation; out receives the JSON answer.

func scopePath(scope, name string) string {
	if scope == "org" {
		return "/v1/orgs/" + url.PathEscape(name)
	}
	return "/v1/apps/" + url.PathEscape(name)
}

// Usage reads month's usage ("" is the current month).
func (c *Client) Usage(ctx context.Context, scope, name, month string, out any) error {
	q := url.Values{}
	if month != "" {
		q.Set("month", month)
	}
	return c.do(ctx, "GET", scopePath(scope, name)+"/usage", q, nil, out)
}

// GetBudget reads a budget.
func (c *Client) GetBudget(ctx context.Context, scope, name string, out any) error {
	return c.do(ctx, "GET", scopePath(scope, name)+"/budget", nil, nil, out)
}

// PutBudget sets a budget from in (billing.BudgetRequest).
func (c *Client) PutBudget(ctx context.Context, scope, name string, in, out any) error {
	return c.do(ctx, "PUT", scopePath(scope, name)+"/budget", nil, in, out)
}

// DeleteBudget removes a budget, resuming what it suspended.
func (c *Client) DeleteBudget(ctx context.Context, scope, name string) error {
	return c.do(ctx, "DELETE", scopePath(scope, name)+"/budget", nil, nil, nil)
}

// ResumeBudget resumes what a budget suspended, for the rest of the month.
func (c *Client) ResumeBudget(ctx context.Context, scope, name string) error {
	return c.do(ctx, "POST", scopePath(scope, name)+"/budget/resume", nil, nil, nil)
}
