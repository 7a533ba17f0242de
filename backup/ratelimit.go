package backup

import (
	"context"
	"sync"
	"time"
)

// rateLimiter spaces reads so that they average at most rate bytes per
// second. A nil *rateLimiter does not limit.
type rateLimiter struct {
	mu   sync.Mutex
	rate float64 // bytes per second
	next time.Time
}

func newRateLimiter(bytesPerSecond int64) *rateLimiter {
	if bytesPerSecond <= 0 {
		return nil
	}
	return &rateLimiter{rate: float64(bytesPerSecond)}
}

// wait blocks until n more bytes may be read.
func (l *rateLimiter) wait(ctx context.Context, n int) error {
	if l == nil {
		return ctx.Err()
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	delay := l.next.Sub(now)
	l.next = l.next.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	l.mu.Unlock()
	if delay <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(delay)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
