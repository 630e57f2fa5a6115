package disclosure

// xmpNamespace starts the payload of an APP1 segment that holds XMP, as the
// XMP specification (part 3) defines it for JPEG.
const xmpNamespace = "http://ns.adobe.com/xap/1.0/\x00"

// xmpPacket is the whole of the metadata Apply writes. It names no toolkit
// and no other property, so readers show only the digital source type; the
// namespace URI of Iptc4xmpExt is the one the IPTC Photo Metadata Standard
// fixes for its extension schema.
const xmpPacket = `<?xpacket begin="` + "\ufeff" + `" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    Iptc4xmpExt:DigitalSourceType="` + DigitalSourceType + `"/>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>`

// xmpSegment returns the APP1 segment, marker included, that carries
// xmpPacket.
func xmpSegment() []byte {
	n := 2 + len(xmpNamespace) + len(xmpPacket)
	seg := make([]byte, 0, 2+n)
	seg = append(seg, 0xFF, markerAPP1, byte(n>>8), byte(n))
	seg = append(seg, xmpNamespace...)
	return append(seg, xmpPacket...)
}
