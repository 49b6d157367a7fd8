package authz

// pathIndex finds, for a request path, every privilege whose path is a
// prefix of it: upstream's match is a plain string prefix (Quirk 6), so
// the privileges that can match a path are exactly those on the way
// from the root of a radix tree of the privilege paths to the path. A
// lookup costs the length of the path, not the number of privileges.
type pathIndex struct{ root radixNode }

// radixNode is a node of the radix tree: edge is the text from its parent
// (the root's is ""), privs the privileges whose whole path ends here
// (indices into RuleSet.privs, ascending), children sorted by the first
// byte of their edge (all different).
type radixNode struct {
	edge     string
	privs    []int
	children []*radixNode
}

// add indexes privilege i with path. Indices must be added in ascending
// order.
func (x *pathIndex) add(path string, i int) {
	n := &x.root
	for {
		if path == "" {
			n.privs = append(n.privs, i)
			return
		}
		k, c := n.child(path[0])
		if c == nil {
			n.children = append(n.children, nil)
			copy(n.children[k+1:], n.children[k:])
			n.children[k] = &radixNode{edge: path, privs: []int{i}}
			return
		}
		l := commonPrefix(c.edge, path)
		if l < len(c.edge) {
			// Split c's edge at l.
			mid := &radixNode{edge: c.edge[:l], children: []*radixNode{c}}
			c.edge = c.edge[l:]
			n.children[k] = mid
			c = mid
		}
		n, path = c, path[l:]
	}
}

// child returns the child whose edge starts with b, or nil and the
// position where it would be inserted.
func (n *radixNode) child(b byte) (int, *radixNode) {
	lo, hi := 0, len(n.children)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if n.children[m].edge[0] < b {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(n.children) && n.children[lo].edge[0] == b {
		return lo, n.children[lo]
	}
	return lo, nil
}

func commonPrefix(a, b string) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// prefixesOf appends to dst the indices of the privileges whose path is a
// prefix of path, ascending, and returns it.
func (x *pathIndex) prefixesOf(path string, dst []int) []int {
	n := &x.root
	sorted := true
	for {
		if len(n.privs) > 0 {
			if len(dst) > 0 && dst[len(dst)-1] > n.privs[0] {
				sorted = false
			}
			dst = append(dst, n.privs...)
		}
		if path == "" {
			break
		}
		_, c := n.child(path[0])
		if c == nil || len(c.edge) > len(path) || path[:len(c.edge)] != c.edge {
			break
		}
		n, path = c, path[len(c.edge):]
	}
	if !sorted {
		// Insertion sort: a path has few matching privileges.
		for i := 1; i < len(dst); i++ {
			for j := i; j > 0 && dst[j-1] > dst[j]; j-- {
				dst[j-1], dst[j] = dst[j], dst[j-1]
			}
		}
	}
	return dst
}
