package guestinit

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// configureNetwork brings lo up and, when the command line gave an
// address, the device with that address (and addr6 if valid) and a
// default route. It speaks rtnetlink itself: the guest has no iproute2.
func configureNetwork(ip ipConfig, addr6 netip.Prefix, timeout time.Duration) error {
	nl, err := newNetlink()
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer nl.close()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	if err := nl.linkUp(lo.Index); err != nil {
		return fmt.Errorf("network: lo up: %w", err)
	}
	if !ip.Addr.IsValid() {
		return nil
	}
	var dev *net.Interface
	deadline := time.Now().Add(timeout)
	for dev == nil {
		if dev, err = net.InterfaceByName(ip.Device); err != nil {
			if time.Now().After(deadline) {
				return fmt.Errorf("network: %s did not appear within %s; the kernel needs virtio_net", ip.Device, timeout)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := nl.addAddr(dev.Index, ip.Addr, 0); err != nil {
		return fmt.Errorf("network: address %s on %s: %w", ip.Addr, ip.Device, err)
	}
	if err := nl.linkUp(dev.Index); err != nil {
		return fmt.Errorf("network: %s up: %w", ip.Device, err)
	}
	if addr6.IsValid() {
		// No duplicate address detection: the host hands each address
		// out once, and the app may dial as soon as it starts.
		if err := nl.addAddr(dev.Index, addr6, unix.IFA_F_NODAD); err != nil {
			return fmt.Errorf("network: IPv6 address %s on %s (the guest kernel needs CONFIG_IPV6): %w", addr6, ip.Device, err)
		}
	}
	if ip.Gateway.IsValid() {
		if err := nl.defaultRoute(dev.Index, ip); err != nil {
			return fmt.Errorf("network: default route via %s: %w", ip.Gateway, err)
		}
	}
	if addr6.IsValid() {
		if err := nl.route6(dev.Index); err != nil {
			return fmt.Errorf("network: route for %s via %s: %w", range6, gateway6, err)
		}
	}
	return nil
}

// range6 is routed via the host bridge's gateway6 with MTU route6MTU, as
// hostnet.Attach routes it for a runc machine: other organisations' and
// hosts' 6PN, which the host's rules and mesh decide about.
var (
	range6    = netip.MustParsePrefix("fdaa::/16")
	gateway6  = netip.MustParseAddr("fe80::1")
	route6MTU = uint32(1372)
)

func (n *netlink) route6(index int) error {
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = unix.AF_INET6
	b[1] = byte(range6.Bits())
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	b = attr(b, unix.RTA_DST, range6.Addr().AsSlice())
	b = attr(b, unix.RTA_GATEWAY, gateway6.AsSlice())
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	b = attr(b, unix.RTA_OIF, oif)
	mtu := make([]byte, 4)
	binary.NativeEndian.PutUint32(mtu, route6MTU)
	b = attr(b, unix.RTA_METRICS, attr(nil, unix.RTAX_MTU, mtu))
	return n.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b)
}

type netlink struct {
	fd  int
	seq uint32
}

func newNetlink() (*netlink, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &netlink{fd: fd}, nil
}

func (n *netlink) close() { unix.Close(n.fd) }

func (n *netlink) linkUp(index int) error {
	// struct ifinfomsg: family, pad, type, index, flags, change.
	b := make([]byte, unix.SizeofIfInfomsg)
	b[0] = unix.AF_UNSPEC
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	binary.NativeEndian.PutUint32(b[8:], unix.IFF_UP)
	binary.NativeEndian.PutUint32(b[12:], unix.IFF_UP)
	return n.request(unix.RTM_NEWLINK, 0, b)
}

func (n *netlink) addAddr(index int, p netip.Prefix, flags uint8) error {
	// struct ifaddrmsg: family, prefixlen, flags, scope, index.
	b := make([]byte, unix.SizeofIfAddrmsg)
	b[0] = unix.AF_INET
	a := p.Addr().AsSlice()
	if p.Addr().Is6() {
		b[0] = unix.AF_INET6
	}
	b[1] = byte(p.Bits())
	b[2] = flags
	binary.NativeEndian.PutUint32(b[4:], uint32(index))
	b = attr(b, unix.IFA_LOCAL, a)
	b = attr(b, unix.IFA_ADDRESS, a)
	return n.request(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b)
}

func (n *netlink) defaultRoute(index int, ip ipConfig) error {
	// struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope,
	// type, flags.
	b := make([]byte, unix.SizeofRtMsg)
	b[0] = unix.AF_INET
	b[4] = unix.RT_TABLE_MAIN
	b[5] = unix.RTPROT_BOOT
	b[6] = unix.RT_SCOPE_UNIVERSE
	b[7] = unix.RTN_UNICAST
	gw := ip.Gateway.As4()
	b = attr(b, unix.RTA_GATEWAY, gw[:])
	oif := make([]byte, 4)
	binary.NativeEndian.PutUint32(oif, uint32(index))
	b = attr(b, unix.RTA_OIF, oif)
	return n.request(unix.RTM_NEWROUTE, unix.NLM_F_CREATE|unix.NLM_F_REPLACE, b)
}

// attr appends a route attribute, padded to 4 bytes.
func attr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	h := make([]byte, unix.SizeofRtAttr)
	binary.NativeEndian.PutUint16(h[0:], uint16(l))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(append(b, h...), data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// request sends one message and waits for the kernel's acknowledgement.
func (n *netlink) request(typ uint16, flags uint16, body []byte) error {
	n.seq++
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	binary.NativeEndian.PutUint32(msg[8:], n.seq)
	msg = append(msg, body...)
	if err := unix.Sendto(n.fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	buf := make([]byte, 8192)
	for {
		k, _, err := unix.Recvfrom(n.fd, buf, 0)
		if err != nil {
			return err
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:k])
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.Header.Seq != n.seq || m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
				continue
			}
			if errno := int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
				return unix.Errno(-errno)
			}
			return nil
		}
	}
}
