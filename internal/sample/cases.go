package sample

// Lights of the quality set.
var (
	daylight = DemoRoom().Light
	// strongSun is a clear midday: a hard, bright patch across the floor.
	strongSun = Light{
		Sun: [3]float64{-0.25, 0.5, 0.83}, SunColor: [3]float64{255, 244, 226}, SunPower: 3.2,
		Sky: [3]float64{250, 250, 250}, SkyPower: 1.1, Ambient: 0.36, View: 1.15,
	}
	// overcast is a grey winter afternoon: no sun, a dim sky.
	overcast = Light{
		Sun: [3]float64{0, 1, 1}, SunColor: [3]float64{255, 255, 255}, SunPower: 0,
		Sky: [3]float64{200, 208, 220}, SkyPower: 0.45, Ambient: 0.16, View: 0.6,
	}
	// evening is a low orange sun from the left.
	evening = Light{
		Sun: [3]float64{-0.85, 0.22, 0.35}, SunColor: [3]float64{255, 160, 84}, SunPower: 3,
		Sky: [3]float64{255, 178, 122}, SkyPower: 0.6, Ambient: 0.18, View: 0.75,
	}
)

// room returns a plain w×d×h room with a level camera at eye height in the
// middle of its front, the given windows, downlights on a grid and
// daylight.
func room(w, d, h float64, windows ...Window) Room {
	return Room{
		Width: w, Depth: d, Height: h,
		Windows: windows,
		Downlights: [][2]float64{
			{-w / 4, d * 0.45}, {w / 4, d * 0.45}, {-w / 4, d * 0.78}, {w / 4, d * 0.78},
		},
		Camera: Camera{Y: 1.35, FOV: 76},
		Light:  daylight,
	}
}

// back returns a window in the back wall, centred on x, w wide.
func back(x, w float64) Window {
	return Window{Wall: BackWall, From: x - w/2, To: x + w/2, Sill: 0.55, Top: 2.2}
}

// zone returns the furniture zone of r: the floor away from the walls,
// from 1.2 m in front of the camera, up to 0.9 m.
func zone(r Room) *Zone {
	return &Zone{
		Left: -r.Width/2 + 0.3, Right: r.Width/2 - 0.3,
		Near: r.Camera.Z + 1.2, Far: r.Depth - 0.3, Top: 0.9,
	}
}

// with applies changes to a room; it keeps the table below readable.
func with(r Room, change func(*Room)) Room {
	change(&r)
	return r
}

// QualitySet returns the bundled quality set's cases, in manifest order.
func QualitySet() []Case {
	narrow := room(2.6, 4.8, 2.5, back(0, 1.1))
	narrow.Camera.FOV = 72
	wide := room(7.4, 5.2, 2.7, back(-1.9, 1.6), back(1.9, 1.6))
	door := with(room(4.2, 5.0, 2.6, back(0.4, 1.8)), func(r *Room) {
		r.Door = &Door{Wall: LeftWall, From: 2.4, To: 3.3, Height: 2.05}
	})
	attic := with(room(4.8, 5.0, 2.7, back(-0.8, 1.2)), func(r *Room) {
		r.Slope = &Slope{Wall: RightWall, Knee: 1.0, Run: 2.4}
		r.Windows[0].Top = 1.9
		r.Downlights = [][2]float64{{-1.2, 2.2}, {-1.2, 3.9}}
	})
	low := with(room(4.6, 5.4, 2.6, back(0, 2.2)), func(r *Room) {
		r.Camera.Y, r.Camera.Pitch = 0.62, 6
	})
	corner := with(room(5.4, 5.6, 2.6, back(-0.6, 1.6)), func(r *Room) {
		r.Windows = append(r.Windows, Window{Wall: RightWall, From: 1.6, To: 3.0, Sill: 0.6, Top: 2.15})
		r.Camera.X, r.Camera.Z, r.Camera.Yaw, r.Camera.FOV = -1.9, 0.1, 30, 72
	})
	return []Case{
		{
			ID: "narrow-bedroom", RoomType: "bedroom", Style: "japandi", Seed: 4101,
			Notes: "A 2.6 m wide room: furniture must fit between close walls.",
			Room:  narrow, Zone: zone(narrow),
		},
		{
			ID: "wide-living-room", RoomType: "living_room", Style: "modern", Seed: 4102,
			Notes: "A 7.4 m wide room with two windows: one furniture group must not be stretched across it.",
			Room:  wide, Zone: zone(wide),
		},
		{
			ID: "three-window-dining-room", RoomType: "dining_room", Style: "farmhouse", Seed: 4103,
			Notes: "Three windows in the back wall: staging must keep every opening and not turn glass into wall.",
			Room:  room(5.8, 5.0, 2.7, back(-1.9, 1.2), back(0, 1.2), back(1.9, 1.2)),
		},
		{
			ID: "door-home-office", RoomType: "home_office", Style: "industrial", Seed: 4104,
			Notes: "A doorway on the left wall: the way through must stay clear of furniture.",
			Room:  door, Zone: zone(door),
		},
		{
			ID: "attic-kids-bedroom", RoomType: "kids_bedroom", Style: "scandinavian", Seed: 4105,
			Notes: "A ceiling sloping down to a 1 m knee wall: tall furniture must not stand under the slope.",
			Room:  attic, Zone: &Zone{Left: -2.1, Right: 1.0, Near: 1.2, Far: 4.7, Top: 0.9},
		},
		{
			ID: "sunny-living-room", RoomType: "living_room", Style: "coastal", Seed: 4106,
			Notes: "Strong midday sun: the bright patch on the floor must not be read as a rug or a wall.",
			Room:  with(room(5.0, 5.6, 2.7, back(0.3, 2.4)), func(r *Room) { r.Light = strongSun }),
		},
		{
			ID: "overcast-bedroom", RoomType: "bedroom", Style: "traditional", Seed: 4107,
			Notes: "Dim overcast light: low contrast edges and noise must not turn into clutter.",
			Room:  with(room(4.4, 4.8, 2.6, back(0, 1.6)), func(r *Room) { r.Light = overcast }),
		},
		{
			ID: "tilted-living-room", RoomType: "living_room", Style: "mid_century", Seed: 4108,
			Notes: "A camera rolled 5 degrees and pitched down: furniture must follow the room, not the frame.",
			Room: with(room(5.0, 5.8, 2.7, back(-0.4, 2.0)), func(r *Room) {
				r.Camera.Roll, r.Camera.Pitch = 5, -7
			}),
		},
		{
			ID: "low-camera-dining-room", RoomType: "dining_room", Style: "mid_century", Seed: 4109,
			Notes: "A camera 0.6 m above the floor: the floor is foreshortened and furniture seen from below.",
			Room:  low, Zone: zone(low),
		},
		{
			ID: "corner-view-studio", RoomType: "studio", Style: "industrial", Seed: 4110,
			Notes: "A view across a corner with windows on two walls: two vanishing points, not one.",
			Room:  corner, Zone: &Zone{Left: -2.0, Right: 2.4, Near: 2.2, Far: 5.3, Top: 0.9},
		},
		{
			ID: "windowless-entryway", RoomType: "entryway", Style: "minimalist", Seed: 4111,
			Notes: "A bare room with no window, lit only by fill light: nothing may invent a light source.",
			Room: with(room(3.4, 4.4, 2.6), func(r *Room) {
				r.Door = &Door{Wall: RightWall, From: 2.6, To: 3.5, Height: 2.05}
				r.Light.Ambient = 0.62
			}),
		},
		{
			ID: "evening-dining-room", RoomType: "dining_room", Style: "bohemian", Seed: 4112,
			Notes: "Low orange evening sun through a side window: warm colour casts must stay on the walls.",
			Room: with(room(4.8, 5.4, 2.7, back(0.8, 1.4)), func(r *Room) {
				r.Windows = append(r.Windows, Window{Wall: LeftWall, From: 2.2, To: 3.8, Sill: 0.5, Top: 2.2})
				r.Light = evening
			}),
		},
		{
			ID: "wide-angle-bedroom", RoomType: "bedroom", Style: "coastal", Seed: 4113,
			Notes:    "A small room seen through a 100 degree lens: stretched edges must not warp the furniture.",
			Room:     with(room(3.4, 3.8, 2.5, back(0, 1.4)), func(r *Room) { r.Camera.FOV = 100 }),
			Strength: 0.85,
		},
		{
			ID: "side-window-home-office", RoomType: "home_office", Style: "scandinavian", Seed: 4114,
			Notes: "Light from a window on the right wall only: shadows fall sideways, not towards the camera.",
			Room: with(room(4.0, 4.6, 2.6), func(r *Room) {
				r.Windows = []Window{{Wall: RightWall, From: 1.8, To: 3.4, Sill: 0.8, Top: 2.15}}
				r.Light.Sun = [3]float64{0.7, 0.5, 0.2}
			}),
		},
	}
}
