package edge

// choice is the order in which one request tries an app's machines: the
// nearest region's machines starting at a rotating offset, then the others
// by region rank. It costs one atomic add and no allocation.
type choice struct {
	r     *portRoute
	start int
}

func (r *portRoute) choose() choice {
	if r.first <= 1 {
		return choice{r: r}
	}
	n := r.next.Add(1) - 1
	return choice{r: r, start: int(n % uint32(r.first))}
}

func (c choice) len() int { return len(c.r.backends) }

// at is the i-th machine to try.
func (c choice) at(i int) *Backend {
	if i < c.r.first {
		return c.r.backends[(c.start+i)%c.r.first]
	}
	return c.r.backends[i]
}
